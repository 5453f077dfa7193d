package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache"
)

// TestReferrersMemoryBounded: readers of a subject whose referrers carry
// megabytes of annotations each hold what they read within a budget
// shared by the process. Before, every reader held a page of eight such
// records at once (decoded, and again as it was encoded): 20 readers at
// once grew the heap by 1.6 GiB, and more readers grew it further.
func TestReferrersMemoryBounded(t *testing.T) {
	tr := newTestRegistry(t)
	subj := tr.image("pub/app", "l")
	tr.wantStatus(tr.pushManifest("pub/app", "v1", MediaTypeOCIManifest, subj), http.StatusCreated)
	sdig := tr.do("HEAD", "/v2/pub/app/manifests/v1", nil).Header.Get("Docker-Content-Digest")
	cfg := tr.pushBlob("pub/app", []byte("{}"))
	big := strings.Repeat("a", 3900<<10)
	const referrers = 8
	for i := range referrers {
		b, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": MediaTypeOCIManifest,
			"config":      map[string]any{"mediaType": "application/vnd.example+json", "digest": cfg.String(), "size": 2},
			"layers":      []any{},
			"subject":     map[string]any{"mediaType": MediaTypeOCIManifest, "digest": sdig, "size": len(subj)},
			"annotations": map[string]string{"x": big[:len(big)-i]}})
		if err != nil {
			t.Fatal(err)
		}
		tr.wantStatus(tr.pushManifest("pub/app", "r"+string(rune('a'+i)), MediaTypeOCIManifest, b), http.StatusCreated)
	}
	big = ""
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak atomic.Uint64
	stop, sampled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	var wg sync.WaitGroup
	var got atomic.Int32
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(tr.srv.URL + "/v2/pub/app/referrers/" + sdig)
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			time.Sleep(300 * time.Millisecond) // a slow reader (not synchronisation)
			// Read, not held: the readers share this process's heap.
			var tail tailWriter
			n, err := io.Copy(&tail, resp.Body)
			if err == nil && n > referrers*(3900<<10-referrers) && string(tail.last) == "]}" {
				got.Add(1)
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-sampled
	if got.Load() != 20 {
		t.Errorf("%d of 20 readers got the %d referrers", got.Load(), referrers)
	}
	// The server's part must stay within its budget (64 MiB) and some
	// slack; before, it grew by 1.6 GiB.
	growth := int64(peak.Load()) - int64(base)
	t.Logf("heap in use: base %d MiB, peak %d MiB", base>>20, peak.Load()>>20)
	if limit := int64(300 << 20); growth > limit {
		t.Errorf("20 readers of %d referrers of 3.9 MiB of annotations grew the heap by %d MiB, want under %d MiB", referrers, growth>>20, limit>>20)
	}
}

// tailWriter keeps the last two bytes written to it.
type tailWriter struct{ last []byte }

func (w *tailWriter) Write(p []byte) (int, error) {
	w.last = append(w.last, p...)
	if len(w.last) > 2 {
		w.last = append(w.last[:0], w.last[len(w.last)-2:]...)
	}
	return len(p), nil
}

// TestReferrersSmallDoNotWait: while large referrers hold the whole
// budget (readers that stopped reading), the list of a subject whose
// referrers are small, once seen, is answered at once; a subject that
// gains a large referrer is counted large from the push on.
func TestReferrersSmallDoNotWait(t *testing.T) {
	tr := newTestRegistry(t)
	subj := tr.image("pub/app", "l")
	tr.wantStatus(tr.pushManifest("pub/app", "v1", MediaTypeOCIManifest, subj), http.StatusCreated)
	sdig := tr.do("HEAD", "/v2/pub/app/manifests/v1", nil).Header.Get("Docker-Content-Digest")
	cfg := tr.pushBlob("pub/app", []byte("{}"))
	push := func(tag, annotation string) {
		b, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": MediaTypeOCIManifest,
			"config":      map[string]any{"mediaType": "application/vnd.example+json", "digest": cfg.String(), "size": 2},
			"layers":      []any{},
			"subject":     map[string]any{"mediaType": MediaTypeOCIManifest, "digest": sdig, "size": len(subj)},
			"annotations": map[string]string{"x": annotation}})
		if err != nil {
			t.Fatal(err)
		}
		tr.wantStatus(tr.pushManifest("pub/app", tag, MediaTypeOCIManifest, b), http.StatusCreated)
	}
	for i := range 5 {
		push(fmt.Sprintf("sig%d", i), fmt.Sprintf("small %d", i))
	}
	list := func() int {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, tr.srv.URL+"/v2/pub/app/referrers/"+sdig, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return -1
		}
		defer resp.Body.Close()
		var idx referrerIndex
		if err := json.NewDecoder(resp.Body).Decode(&idx); err != nil {
			return -1
		}
		return len(idx.Manifests)
	}
	if n := list(); n != 5 {
		t.Fatalf("first listing: %d referrers, want 5", n)
	}
	// Readers of large referrers elsewhere hold the whole budget.
	if err := referrerReads.Acquire(t.Context(), referrerReadBudget); err != nil {
		t.Fatal(err)
	}
	released := false
	release := func() {
		if !released {
			referrerReads.Release(referrerReadBudget)
			released = true
		}
	}
	defer release()
	if n := list(); n != 5 {
		t.Errorf("a list of small referrers, seen before, waited behind large ones: %d", n)
	}
	// A large referrer arrives: the next list waits for its share.
	push("big", strings.Repeat("a", 1<<20))
	if n := list(); n != -1 {
		t.Errorf("a list holding a 1 MiB referrer was read with the budget spent: %d referrers", n)
	}
	release()
	if n := list(); n != 6 {
		t.Errorf("after the budget freed: %d referrers, want 6", n)
	}
}

// TestReferrersNewManifestDoesNotWait: the list of a manifest just
// pushed (a pull's signature check reads it) does not wait behind large
// referrers elsewhere that hold the whole budget.
func TestReferrersNewManifestDoesNotWait(t *testing.T) {
	tr := newTestRegistry(t)
	subj := tr.image("pub/new", "l")
	tr.wantStatus(tr.pushManifest("pub/new", "v1", MediaTypeOCIManifest, subj), http.StatusCreated)
	sdig := tr.do("HEAD", "/v2/pub/new/manifests/v1", nil).Header.Get("Docker-Content-Digest")
	if err := referrerReads.Acquire(t.Context(), referrerReadBudget); err != nil {
		t.Fatal(err)
	}
	defer referrerReads.Release(referrerReadBudget)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, tr.srv.URL+"/v2/pub/new/referrers/"+sdig, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("the list of a manifest just pushed waited behind a spent budget: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("status %d", resp.StatusCode)
	}
}

// TestReferrersMirroredManifestDoesNotWait: a manifest a mirror just
// fetched counts as having no referrers, as a pushed one does: the scan
// of its referrers (a pull's signature check) does not wait behind large
// referrers elsewhere that hold the whole budget.
func TestReferrersMirroredManifestDoesNotWait(t *testing.T) {
	env := newMirrorEnv(t)
	img := randomImage(t, 1024, 1)
	env.up.pushImage("library/debian", "bookworm", img)
	want, _ := img.Digest()
	resp := env.do("GET", "/v2/docker.io/library/debian/manifests/bookworm", nil)
	env.wantStatus(resp, http.StatusOK)
	if err := env.h.Drain(t.Context()); err != nil { // stored, not only answered
		t.Fatal(err)
	}
	d, err := cache.ParseDigest(want.String())
	if err != nil {
		t.Fatal(err)
	}
	if err := referrerReads.Acquire(t.Context(), referrerReadBudget); err != nil {
		t.Fatal(err)
	}
	defer referrerReads.Release(referrerReadBudget)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	err = eachReferrer(ctx, env.store, "docker.io/library/debian", d, DefaultMaxManifestSize,
		func([]cache.Manifest, bool) (bool, error) { return true, nil })
	if err != nil {
		t.Fatalf("the referrers of a manifest a mirror just fetched waited behind a spent budget: %v", err)
	}
}
