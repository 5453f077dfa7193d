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
	"errors"
	"fmt"
	"os"
	"syscall"
)

// Headroom is how many descriptors must be free for a write: badger needs
// one for a new memtable and one per table it flushes; the rest is room
// for what other goroutines open meanwhile (a client that closes and
// reopens connections by the dozen beat 8; the server's listener keeps
// more than this free, see caddymodule/fdreserve.go).
const Headroom = 32

// Admit returns an error (OutOfFiles) while fewer than Headroom file
// descriptors are free. It opens that many and closes them again: a few
// dozen system calls, against the sync every write waits for.
func Admit() error {
	var probes [Headroom]*os.File
	defer func() {
		for _, f := range probes {
			if f != nil {
				f.Close()
			}
		}
	}()
	for i := range probes {
		f, err := os.Open(os.DevNull)
		if err != nil {
			if OutOfFiles(err) {
				return fmt.Errorf("fewer than %d file descriptors free: %w", Headroom, err)
			}
			return nil // says nothing about descriptors
		}
		probes[i] = f
	}
	return nil
}

// OutOfFiles reports whether err is the process's (EMFILE) or the
// system's (ENFILE) limit of open files.
func OutOfFiles(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}
