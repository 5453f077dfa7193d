//go:build unix

package pgtest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/caddy-oci/caddy-oci/internal/procstop"
)

// Pause stops every process of the server (SIGSTOP), as a hung host
// would: connections stay open, new ones are accepted by the kernel, and
// nothing answers. Resume continues them.
func (s *Server) Pause() error { return s.signalAll(procstop.Stop) }

// Resume continues a paused server.
func (s *Server) Resume() error { return s.signalAll(procstop.Continue) }

// signalAll signals the postmaster first (so it forks no one new) and
// then its children.
func (s *Server) signalAll(sig func(pid int) error) error {
	pm, err := s.postmasterPID()
	if err != nil {
		return err
	}
	if err := sig(pm); err != nil {
		return fmt.Errorf("postmaster: %w", err)
	}
	for _, pid := range childrenOf(pm) {
		_ = sig(pid) // a child may have exited meanwhile
	}
	return nil
}

func (s *Server) postmasterPID() (int, error) {
	b, err := os.ReadFile(filepath.Join(s.dataDir(), "postmaster.pid"))
	if err != nil {
		return 0, fmt.Errorf("server not running: %w", err)
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	return strconv.Atoi(string(bytes.TrimSpace(line)))
}

// childrenOf lists the processes whose parent is ppid, from /proc.
func childrenOf(ppid int) []int {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var out []int
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and parens.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		fields := bytes.Fields(b[i+1:])
		if len(fields) < 2 {
			continue
		}
		if p, _ := strconv.Atoi(string(fields[1])); p == ppid {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(f)))
			out = append(out, pid)
		}
	}
	return out
}

// processAlive reports whether a process pid exists.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
