//go:build unix

package s3test

import "github.com/caddy-oci/caddy-oci/internal/procstop"

// Pause stops the server (SIGSTOP), as a hung host would: connections
// stay open, new ones are accepted by the kernel, and nothing answers.
// Resume continues it; the test's end resumes it before killing it.
func (s *Server) Pause() error { return s.signal(procstop.Stop) }

// Resume continues a paused server.
func (s *Server) Resume() error { return s.signal(procstop.Continue) }

func (s *Server) signal(sig func(pid int) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return nil
	}
	return sig(s.proc.Process.Pid)
}
