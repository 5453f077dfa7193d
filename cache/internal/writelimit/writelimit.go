// Package writelimit measures, for the write benchmarks of package cache
// and of the filesystem blob backend, what a write of blob bytes cannot
// beat on the same disk in the same run, so that each reports its ratio
// to it.
package writelimit

import (
	"bytes"
	"io"
	"os"
	"testing"
	"time"
)

// Measure writes data to a new file in dir through a buffer of bufSize,
// feeding the same bytes to h when it is not nil, fsyncs, and returns the
// time that took. The file is removed.
func Measure(b *testing.B, dir string, data []byte, h io.Writer, bufSize int) time.Duration {
	b.Helper()
	start := time.Now()
	f, err := os.CreateTemp(dir, "limit-*")
	if err != nil {
		b.Fatal(err)
	}
	defer os.Remove(f.Name())
	var w io.Writer = f
	if h != nil {
		w = io.MultiWriter(f, h)
	}
	if _, err := io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{bytes.NewReader(data)}, make([]byte, bufSize)); err != nil {
		b.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	el := time.Since(start)
	f.Close()
	return el
}
