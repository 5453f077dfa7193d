//go:build unix

// Package procstop stops a process (SIGSTOP) for a test's "hung server"
// drill and returns only once it has stopped.
//
// kill(2) returns before the process stops: each of its threads stops
// when the kernel next interrupts it, and on a loaded virtual machine a
// thread running on another virtual CPU can go on for tens of
// milliseconds (a drill saw an S3 server answer requests 20-40 ms after
// its SIGSTOP). A drill that sends its requests right after the signal
// must not have them answered by a server about to stop.
package procstop

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// stopWait bounds how long Stop waits for every thread to stop.
const stopWait = 10 * time.Second

// Stop sends SIGSTOP to pid and waits until every thread of it is
// stopped. Where /proc cannot be read (not Linux) it returns after the
// signal.
func Stop(pid int) error {
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return fmt.Errorf("stop %d: %w", pid, err)
	}
	deadline := time.Now().Add(stopWait)
	for {
		stopped, err := allStopped(pid)
		if err != nil || stopped {
			return nil // gone, or nothing to go by
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("process %d: threads still running %s after SIGSTOP", pid, stopWait)
		}
		time.Sleep(time.Millisecond)
	}
}

// Continue sends SIGCONT to pid.
func Continue(pid int) error {
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		return fmt.Errorf("continue %d: %w", pid, err)
	}
	return nil
}

// allStopped reports whether every thread of pid is stopped (state T, or
// t when traced), from /proc/<pid>/task/*/stat.
func allStopped(pid int) (bool, error) {
	stats, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	if err != nil {
		return false, err
	}
	if len(stats) == 0 {
		return false, errors.New("no threads listed")
	}
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // a thread that exited meanwhile
		}
		// pid (comm) state ...; comm may hold spaces and parens.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || i+2 >= len(s) {
			return false, errors.New("unreadable stat")
		}
		// A zombie (Z) or dead (X) thread runs no more than a stopped
		// one: a backend that exited while its parent was being stopped
		// stays a zombie until the parent continues and reaps it, and
		// waiting for it to stop took the whole stopWait per process.
		if st := s[i+2]; st != 'T' && st != 't' && st != 'Z' && st != 'X' {
			return false, nil
		}
	}
	return true, nil
}
