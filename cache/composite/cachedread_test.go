package composite

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/readcache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/cache/coord"
	"github.com/caddy-oci/caddy-oci/cache/metastore"
)

// s3Requests counts the requests that reach an S3 server, by method,
// at a reverse proxy on loopback in front of it.
type s3Requests struct {
	mu sync.Mutex
	n  map[string]int
}

// countingProxy starts a proxy to endpoint and returns its URL. The Host
// header goes through unchanged, so the requests' signatures (made for
// the proxy's address) still hold.
func countingProxy(t *testing.T, endpoint string) (string, *s3Requests) {
	target, err := url.Parse(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	c := &s3Requests{n: map[string]int{}}
	rp := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		c.n[r.Method]++
		c.mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, c
}

// take returns the counts since the last take.
func (c *s3Requests) take() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.n
	c.n = map[string]int{}
	return n
}

// TestCachedReads: replicas on S3, each with its read cache. A cold read
// is one GET (the size is the record's: no HEAD first); a warm read is
// the local copy alone, not one request to S3. A blob another replica's
// GC collected is not served from a copy still on disk: the record says
// it is gone before any copy is looked at.
func TestCachedReads(t *testing.T) {
	metas := []struct {
		name string
		open func(*testing.T) func() (metastore.Store, coord.Leases)
	}{{"badger", badgerMeta}, {"postgres", pgMeta}}
	for _, m := range metas {
		t.Run(m.name, func(t *testing.T) {
			srv := s3test.Start(t)
			bucket := srv.Bucket(t)
			endpoint, requests := countingProxy(t, srv.Endpoint)
			newMeta := m.open(t)
			clk := &clock{t: time.Now()}
			replica := func() *Store {
				blobs, err := s3.New(context.Background(), s3.Config{
					Bucket: bucket, Endpoint: endpoint, Region: srv.Region, Prefix: "registry/",
					AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true, PartSize: 5 << 20,
				}, nil)
				if err != nil {
					t.Fatal(err)
				}
				rc, err := readcache.New(blobs, readcache.Options{Dir: t.TempDir(), MaxBytes: 64 << 20})
				if err != nil {
					t.Fatal(err)
				}
				meta, leases := newMeta()
				s, err := New(Options{Blobs: rc, Meta: meta, Leases: leases})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(s.Close)
				s.now = clk.now
				return s
			}
			a, b := replica(), replica()
			data := randomBytes(3<<20 + 5)
			d := push(t, a, "team/app", data)
			requests.take()

			read := func(s *Store, want map[string]int, what string) {
				t.Helper()
				if _, err := s.HasBlob(ctx(t), "team/app", d); err != nil {
					t.Fatalf("%s: HasBlob: %v", what, err)
				}
				if !bytes.Equal(readBlob(t, s, d), data) {
					t.Fatalf("%s: other bytes", what)
				}
				if got := requests.take(); !reflect.DeepEqual(got, want) {
					t.Fatalf("%s: S3 saw %v, want %v", what, got, want)
				}
			}
			read(a, map[string]int{"GET": 1}, "cold read")
			for range 3 {
				read(a, map[string]int{}, "warm read")
			}
			read(b, map[string]int{"GET": 1}, "cold read on the other replica")
			read(b, map[string]int{}, "warm read on the other replica")

			// Unlinked and collected by a's GC: b's copy stays on its
			// disk, but b answers that the blob is gone.
			if err := a.UnlinkBlob(ctx(t), "team/app", d); err != nil {
				t.Fatal(err)
			}
			clk.add(25 * time.Hour)
			st, err := a.GC(ctx(t))
			if err != nil || st.BlobsRemoved != 1 {
				t.Fatalf("GC: %+v, %v", st, err)
			}
			if _, err := b.HasBlob(ctx(t), "team/app", d); !errors.Is(err, cache.ErrBlobUnknown) {
				t.Fatalf("HasBlob of a collected blob: %v", err)
			}
			if blob, err := b.OpenBlob(ctx(t), d); !errors.Is(err, cache.ErrBlobUnknown) {
				if err == nil {
					blob.Close()
				}
				t.Fatalf("OpenBlob of a collected blob: %v, want ErrBlobUnknown", err)
			}
			if err := b.LinkBlob(ctx(t), "team/other", d); !errors.Is(err, cache.ErrBlobUnknown) {
				t.Fatalf("a mount of a collected blob: %v", err)
			}

			// Pushed again, it is the same bytes: b's copy serves it.
			push(t, a, "team/app", data)
			requests.take()
			read(b, map[string]int{}, "warm read after a push again")
		})
	}
}
