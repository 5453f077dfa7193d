package blobfile

import "sync"

// InFlight holds what writes that run inside a request leave behind if
// they never finish: a monolithic blob push's temporary file, or its
// multipart upload on S3. A graceful stop (SIGTERM) ends the process once
// its grace period is over while such a request may still be blocked
// reading a stalled body: the server does not close the connection, so
// the write's own deferred cleanup never runs, and what it wrote stayed
// until GC's sweep of leftovers (24 h). The store's close undoes them
// instead. A config reload does not close the store: its cut requests end
// on their own (the client leaves, a timeout) and clean up as they do.
// The zero value is ready.
type InFlight struct {
	mu    sync.Mutex
	next  uint64
	undos map[uint64]func()
}

// Add records undo as what removes a write in flight. done forgets it,
// once the write has cleaned up or committed.
func (f *InFlight) Add(undo func()) (done func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.undos == nil {
		f.undos = make(map[uint64]func())
	}
	f.next++
	id := f.next
	f.undos[id] = undo
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(f.undos, id)
	}
}

// UndoAll undoes the writes still in flight and returns how many there
// were. A write that commits meanwhile either wins (its temporary file is
// the blob's now, its upload complete) or fails its commit and reports an
// error: nothing half-visible either way.
func (f *InFlight) UndoAll() int {
	f.mu.Lock()
	undos := f.undos
	f.undos = nil
	f.mu.Unlock()
	// At once: an undo may wait for a network (S3).
	var wg sync.WaitGroup
	for _, undo := range undos {
		wg.Go(undo)
	}
	wg.Wait()
	return len(undos)
}
