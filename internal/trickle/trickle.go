// Package trickle is a request body for tests that arrives one byte at a
// time, often enough that no idle timeout ends it: a slow client, or a
// slowloris.
package trickle

import (
	"io"
	"sync"
	"time"
)

// New returns a body that yields the byte 'x' every interval until stop
// is called, after which it ends (io.EOF). It also ends once its reader
// is closed. stop may be called more than once.
func New(every time.Duration) (body *io.PipeReader, stop func()) {
	pr, pw := io.Pipe()
	quit := make(chan struct{})
	go func() {
		defer pw.Close()
		for {
			select {
			case <-quit:
				return
			case <-time.After(every):
			}
			if _, err := pw.Write([]byte("x")); err != nil {
				return
			}
		}
	}()
	var once sync.Once
	return pr, func() { once.Do(func() { close(quit) }) }
}
