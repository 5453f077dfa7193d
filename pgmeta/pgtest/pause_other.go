//go:build !unix

package pgtest

import "errors"

var errNoSignals = errors.New("pausing PostgreSQL needs unix signals")

// Pause is not available here: it needs unix signals.
func (s *Server) Pause() error { return errNoSignals }

// Resume is not available here: it needs unix signals.
func (s *Server) Resume() error { return errNoSignals }

// processAlive cannot tell here, so no server is taken for an orphan.
func processAlive(int) bool { return true }
