package trickle

import (
	"io"
	"testing"
	"time"
)

// TestTrickle: bytes come one at a time, paced, and the body ends after
// stop.
func TestTrickle(t *testing.T) {
	body, stop := New(20 * time.Millisecond)
	start := time.Now()
	buf := make([]byte, 8)
	for range 3 {
		n, err := body.Read(buf)
		if n != 1 || err != nil || buf[0] != 'x' {
			t.Fatalf("read %d bytes %q, %v; want one x", n, buf[:n], err)
		}
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Fatalf("three bytes in %s: not paced", d)
	}
	stop()
	stop()
	if _, err := io.ReadAll(body); err != nil {
		t.Fatalf("after stop: %v, want the end of the body", err)
	}
}
