package composite

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore"
)

const mirrorRepo = "docker.io/library/app"

func mirrored(repo string) bool { return strings.HasPrefix(repo, "docker.io/") }

// sizeObserver records what the store reports.
type sizeObserver struct {
	mu      sync.Mutex
	size    int64
	evicted int
}

func (o *sizeObserver) MirrorCacheSize(n int64) { o.mu.Lock(); o.size = n; o.mu.Unlock() }
func (o *sizeObserver) MirrorEvicted(items int, _ int64) {
	o.mu.Lock()
	o.evicted += items
	o.mu.Unlock()
}

// mirrorReplicas starts two replicas on one clock with a mirror cache of
// max bytes, whose passes the test runs itself.
func mirrorReplicas(t *testing.T, replica replicas, max int64) (a, b *Store, c *clock, obs *sizeObserver) {
	a, b = replica(), replica()
	t.Cleanup(a.Close)
	t.Cleanup(b.Close)
	c = &clock{t: time.Now()}
	obs = &sizeObserver{}
	for _, s := range []*Store{a, b} {
		s.now = c.now
		s.mirror.manual = true
		s.SetMirrorCache(cache.MirrorCache{Mirrored: mirrored, MaxBytes: max, Observer: obs})
	}
	return a, b, c, obs
}

func fillBlob(t *testing.T, s *Store, data []byte) cache.Digest {
	t.Helper()
	d := cache.FromBytes(cache.SHA256, data)
	src := &slowSource{data: data}
	f, _, err := s.FillAdmitted(ctx(t), mirrorRepo, d, src.open, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := f.Reader(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("fill: %d bytes, %v", len(got), err)
	}
	// Readers may have every byte before the commit.
	if err := f.Wait(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if src.opens.Load() != 1 {
		t.Fatalf("upstream opened %d times for one fill", src.opens.Load())
	}
	return d
}

func gone(t *testing.T, s *Store, d cache.Digest) bool {
	t.Helper()
	_, err := s.HasBlob(ctx(t), mirrorRepo, d)
	if err == nil {
		return false
	}
	if !errors.Is(err, cache.ErrBlobUnknown) {
		t.Fatalf("HasBlob: %v", err)
	}
	if _, err := s.blobs.Stat(ctx(t), d); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("%s unlinked but its bytes are still in the blob store: %v", d, err)
	}
	return true
}

// TestMirrorCacheLRUAcrossReplicas: fills on two replicas add up to one
// size in the shared metadata; above the limit the least recently used
// mirrored blob goes (bytes and links), a blob read on the other replica
// stays, and so does a blob a pushed repository links; a blob used within
// recentUse stays even when the limit asks for more.
func TestMirrorCacheLRUAcrossReplicas(t *testing.T) {
	each(t, func(t *testing.T, replica replicas) {
		const size = 256 << 10
		a, b, c, obs := mirrorReplicas(t, replica, 3*size+size/2)
		var ds []cache.Digest
		var data [][]byte
		for i := range 4 {
			data = append(data, randomBytes(size))
			ds = append(ds, fillBlob(t, []*Store{a, b}[i%2], data[i]))
			c.add(10 * time.Minute)
		}
		// Mirrored, but also pushed: never counted, never evicted.
		pushed := push(t, a, "team/app", randomBytes(size))
		if err := a.LinkBlob(ctx(t), mirrorRepo, pushed); err != nil {
			t.Fatal(err)
		}
		for _, s := range []*Store{a, b} {
			if n, err := s.MirrorCacheSize(ctx(t)); err != nil || n != 4*size {
				t.Fatalf("size after 4 fills on two replicas = %d, %v; want %d", n, err, 4*size)
			}
		}
		// The oldest fill is read on b; b's next flush records it.
		b.Hold(ds[0])()
		if err := b.flushUses(ctx(t)); err != nil {
			t.Fatal(err)
		}
		c.add(10 * time.Minute)
		st, err := a.EvictMirrored(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if st.ItemsEvicted != 1 || st.BytesEvicted != size || st.Size != 3*size {
			t.Fatalf("pass: %+v; want 1 item of %d evicted, %d left", st, size, 3*size)
		}
		if !gone(t, b, ds[1]) {
			t.Fatal("the least recently used blob was not evicted")
		}
		for _, d := range []cache.Digest{ds[0], ds[2], ds[3], pushed} {
			if gone(t, b, d) {
				t.Fatalf("%s evicted: it was read recently, is newer, or is pushed", d)
			}
		}
		if n, err := b.MirrorCacheSize(ctx(t)); err != nil || n != 3*size {
			t.Fatalf("size after the pass, seen by the other replica = %d, %v", n, err)
		}
		if obs.size != 3*size || obs.evicted != 1 {
			t.Fatalf("observer saw size %d, %d evicted", obs.size, obs.evicted)
		}
		// Asked for again: a miss that fills from upstream.
		if d := fillBlob(t, b, data[1]); d != ds[1] || gone(t, a, d) {
			t.Fatal("the evicted blob did not fill again")
		}
		// A blob used within recentUse stays, even when the limit asks
		// for more: another replica may be reading it.
		c.add(time.Minute)
		a.SetMirrorCache(cache.MirrorCache{Mirrored: mirrored, MaxBytes: size, Observer: obs})
		st, err = a.EvictMirrored(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if st.ItemsEvicted != 3 || st.Size != size || gone(t, b, ds[1]) || gone(t, b, pushed) {
			t.Fatalf("pass with a recent fill: %+v; want the 3 others evicted, the refill and the pushed one kept", st)
		}
	})
}
