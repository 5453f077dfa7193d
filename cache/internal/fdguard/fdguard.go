// Package fdguard keeps a badger database from meeting a process out of
// file descriptors in the middle of a write. badger opens its next
// memtable's log file inside a write; when that open fails (EMFILE, e.g.
// under a flood of idle connections) it is left without a memtable: every
// read after panics, and the next write ends the process (an assertion
// that calls log.Fatal). So a write goes ahead only while a few
// descriptors are free; the caller refuses it otherwise, as a temporary
// failure. Flushes and compactions that meet the limit are retried by
// badger itself.
package fdguard

import (
	"fmt"
	"syscall"

	"github.com/caddy-oci/caddy-oci/internal/fdprobe"
)

// Headroom is how many descriptors must be free for a write: badger needs
// one for a new memtable and one per table it flushes; the rest is room
// for what other goroutines open meanwhile (a client that closes and
// reopens connections by the dozen beat 8; the server's listener keeps
// more than this free, see caddymodule/fdreserve.go).
const Headroom = 32

// Admit returns an error (wrapping EMFILE) while fewer than Headroom file
// descriptors are free. Checks at once may each hold one descriptor for a
// moment: up to Headroom/2 of them are not taken for a shortage.
func Admit() error {
	if !fdprobe.Free(Headroom, Headroom/2) {
		return fmt.Errorf("fewer than %d file descriptors free: %w", Headroom, syscall.EMFILE)
	}
	return nil
}
