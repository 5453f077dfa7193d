package registry

import (
	"bytes"
	"context"
	"net/http"
	"runtime"
	"strings"
	"testing"
)

// deepListing answers every tag list and catalog with an object whose
// first member is an array nested depth times, before "tags".
func deepListing(depth int) http.Handler {
	body := append([]byte(`{"x":`), bytes.Repeat([]byte("["), depth)...)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/tags/list") && r.URL.Path != "/v2/_catalog" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	})
}

// TestListingNestingBounded: a member of upstream's tag list or catalog
// that the reader skips (anything but "tags" or "repositories") is
// skipped to a bounded depth. json.Decoder's Token keeps one entry per
// open array, with no bound of its own: before, 8 MiB of '[' cost a
// pull through the mirror's tag list ~375 MB of allocations (143 MB held
// at once) per request, and sync's reader (32 MiB a page) four times
// that; this test saw the allocations over its bound, and no error from
// sync.
func TestListingNestingBounded(t *testing.T) {
	env, _ := newHostileEnv(t, deepListing(8<<20))
	measure := func(name string, f func()) {
		t.Helper()
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		f()
		runtime.ReadMemStats(&after)
		// The 8 MiB answer itself is read, by the upstream's writer and
		// the client's buffers; nothing like 40 times it.
		if got := (after.TotalAlloc - before.TotalAlloc) >> 20; got > 100 {
			t.Errorf("%s: %d MiB allocated", name, got)
		}
	}
	measure("pull", func() {
		resp := env.do(http.MethodGet, "/v2/library/app/tags/list", nil)
		if resp.StatusCode < 400 {
			t.Errorf("pull of a tag list nested 8 Mi deep: %d", resp.StatusCode)
		}
	})
	measure("sync tags", func() {
		if _, err := env.h.SyncSource(env.mirror).Tags(context.Background(), "library/app"); err == nil {
			t.Error("sync of a tag list nested 8 Mi deep: no error")
		}
	})
	measure("sync catalog", func() {
		if _, err := env.h.SyncSource(env.mirror).Repositories(context.Background()); err == nil {
			t.Error("sync of a catalog nested 8 Mi deep: no error")
		}
	})
}
