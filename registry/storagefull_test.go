package registry

import (
	"fmt"
	"net/http"
	"syscall"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache"
)

// TestStorageFullIs507: however a full storage reaches the handler — the
// reserve's refusal, the filesystem's ENOSPC or EDQUOT, a mirror fill that
// ran into either — the client gets 507 STORAGE_FULL, never a 500 or 502.
func TestStorageFullIs507(t *testing.T) {
	for _, cause := range []error{
		fmt.Errorf("cache: write blob: %w", cache.ErrStorageFull),
		fmt.Errorf("cache: write blob: %w", &writeErr{syscall.ENOSPC}),
		fmt.Errorf("cache: sync upload: %w", syscall.EDQUOT),
		fmt.Errorf("%w: sha256:abc: %w", cache.ErrFillFailed, cache.ErrStorageFull),
	} {
		for name, e := range map[string]*Error{
			"errInternal":   errInternal(cause),
			"upstreamError": upstreamError(nil, "blob", cause), // decided before the mirror is looked at
		} {
			if e.Status != http.StatusInsufficientStorage || e.Code != CodeStorageFull {
				t.Errorf("%s(%v) = %d %s, want 507 %s", name, cause, e.Status, e.Code, CodeStorageFull)
			}
		}
	}
	if e := errInternal(fmt.Errorf("cache: %w", syscall.EIO)); e.Status != http.StatusInternalServerError {
		t.Errorf("EIO = %d, want 500", e.Status)
	}
}

// writeErr wraps an errno as os.PathError does.
type writeErr struct{ err error }

func (w *writeErr) Error() string { return "write /x: " + w.err.Error() }
func (w *writeErr) Unwrap() error { return w.err }
