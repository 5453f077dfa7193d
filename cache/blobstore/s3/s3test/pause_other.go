//go:build !unix

package s3test

import "errors"

var errNoSignals = errors.New("pausing versitygw needs unix signals")

// Pause is not available here: it needs unix signals.
func (s *Server) Pause() error { return errNoSignals }

// Resume is not available here: it needs unix signals.
func (s *Server) Resume() error { return errNoSignals }
