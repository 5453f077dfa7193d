package blobfile

import (
	"os"
	"sync"
)

// InFlight holds the temporary files of writes that run inside a request
// (a monolithic blob push). A graceful stop (SIGTERM) ends the process
// once its grace period is over while such a request may still be blocked
// reading a stalled body: the server does not close the connection, so
// the write's own deferred removal never runs and its file stayed until
// GC's sweep of leftovers. The store's Close removes them instead. A
// config reload does not close the store: its cut requests end on their
// own (the client leaves, a timeout) and remove their files as they do.
// The zero value is ready.
type InFlight struct {
	mu    sync.Mutex
	names map[string]struct{}
}

// Add records name as the temporary file of a write in flight. done
// forgets it, once the write has removed or installed it.
func (f *InFlight) Add(name string) (done func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.names == nil {
		f.names = make(map[string]struct{})
	}
	f.names[name] = struct{}{}
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(f.names, name)
	}
}

// RemoveAll removes the files of the writes still in flight and returns
// how many there were. A write that installs its file meanwhile either
// wins (the file is the blob's now; the name is gone) or fails its rename
// and reports an error: nothing half-visible either way.
func (f *InFlight) RemoveAll() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(f.names)
	for name := range f.names {
		os.Remove(name)
	}
	clear(f.names)
	return n
}
