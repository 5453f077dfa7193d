package registry

import (
	"fmt"
	"net/http"
	"os"
	"syscall"
	"testing"
)

// TestReadOnlyStorageUnavailable: a write the storage's filesystem
// refused as read-only (EROFS, wrapped as the stores wrap it) is 503
// UNAVAILABLE with Retry-After, as a storage outage is, not a 500: seen
// in e2e TestReadOnlyBlobDisk (pushes to a single node whose blob disk
// was remounted read-only answered 500 "internal error").
func TestReadOnlyStorageUnavailable(t *testing.T) {
	cause := fmt.Errorf("cache: temp file: %w", &os.PathError{Op: "open", Path: "/data/tmp/x", Err: syscall.EROFS})
	e := errInternal(cause)
	if e.Status != http.StatusServiceUnavailable || e.Code != CodeUnavailable || e.Header.Get("Retry-After") == "" {
		t.Fatalf("a read-only storage: %d %s, Retry-After %q; want 503 UNAVAILABLE with Retry-After", e.Status, e.Code, e.Header.Get("Retry-After"))
	}
}
