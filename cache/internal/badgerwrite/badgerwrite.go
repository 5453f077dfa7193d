// Package badgerwrite is how the process's badger databases (package
// cache's store, and the cluster's badgermeta) take a read-write
// transaction: only while file descriptors are left for badger to open
// its next file (fdguard), and retried when it conflicts with a
// concurrent one, in turns past the second try.
package badgerwrite

import (
	"context"
	"errors"
	"fmt"
	"sync"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/caddy-oci/caddy-oci/cache/internal/fdguard"
)

// maxAttempts bounds the tries of one write that keeps conflicting with
// concurrent ones.
const maxAttempts = 64

// Writer runs the read-write transactions of one database.
type Writer struct {
	DB *badger.DB
	// Unavailable is the error a refused or still contended write wraps:
	// the caller's "try again later" (503).
	Unavailable error

	// retryMu: writes that conflicted twice retry one at a time.
	retryMu sync.Mutex
}

// Update runs fn in a read-write transaction, retrying while it conflicts
// with a concurrent one. It refuses (Unavailable) while the process is
// nearly out of file descriptors, when ctx has ended, and when the write
// still conflicts after maxAttempts tries.
func (w *Writer) Update(ctx context.Context, fn func(txn *badger.Txn) error) error {
	var err error
	for attempt := range maxAttempts {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fdguard.Admit(); err != nil {
			return fmt.Errorf("%w: metadata write refused: %w", w.Unavailable, err)
		}
		if attempt < 2 {
			err = w.DB.Update(fn)
		} else {
			// Writers of one key (one manifest pushed under many tags
			// at once, by 50 clients) that retry together conflict
			// together again: 16 tries each still failed two pushes in
			// three. Past its second try a writer takes turns with the
			// others that retry, so each conflicts only with first
			// tries.
			w.retryMu.Lock()
			err = w.DB.Update(fn)
			w.retryMu.Unlock()
		}
		if !errors.Is(err, badger.ErrConflict) {
			return err
		}
	}
	// Still contended: no fault, and the client's retry will do.
	return fmt.Errorf("%w: %w", w.Unavailable, err)
}
