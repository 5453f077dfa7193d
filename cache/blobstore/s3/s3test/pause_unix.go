//go:build unix

package s3test

import "syscall"

// Pause stops the server (SIGSTOP), as a hung host would: connections
// stay open, new ones are accepted by the kernel, and nothing answers.
// Resume continues it; the test's end resumes it before killing it.
func (s *Server) Pause() error { return s.signal(syscall.SIGSTOP) }

// Resume continues a paused server.
func (s *Server) Resume() error { return s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return nil
	}
	return s.proc.Process.Signal(sig)
}
