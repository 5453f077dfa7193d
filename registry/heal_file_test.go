package registry

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/fs"
	"github.com/caddy-oci/caddy-oci/cache/composite"
	"github.com/caddy-oci/caddy-oci/cache/coord"
	"github.com/caddy-oci/caddy-oci/cache/metastore/badgermeta"
)

// TestBlobFileCutWhileServedBreaksTransfer: a blob file cut short while
// a GET streams it, whole or ranged (the answer's headers, with the
// blob's length, are out), ends with the HTTP/2 stream reset, never a
// clean end of fewer bytes, on the single node and on a folder under the
// composite store. Before, a ranged GET (served by ServeContent, which
// drops a short copy) ended the stream cleanly.
func TestBlobFileCutWhileServedBreaksTransfer(t *testing.T) {
	stores := []struct {
		name string
		open func(t *testing.T) (Store, string)
	}{
		{"single node", func(t *testing.T) (Store, string) {
			dir := t.TempDir()
			st, err := cache.Open(cache.Options{Dir: dir, Logger: zaptest.NewLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = st.Close() })
			return st, dir
		}},
		{"folder", func(t *testing.T) (Store, string) {
			meta, err := badgermeta.Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = meta.Close() })
			dir := t.TempDir()
			blobs, err := fs.New(fs.Options{Dir: dir})
			if err != nil {
				t.Fatal(err)
			}
			st, err := composite.New(composite.Options{Blobs: blobs, Meta: meta, Leases: coord.NewLocal(), SpoolDir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(st.Close)
			return st, dir
		}},
	}
	// Large enough that the answer's flow control (a 4 MiB window, the
	// socket buffers) holds most of it back until the client reads.
	data := make([]byte, 32<<20)
	rand.Read(data)
	d := cache.FromBytes(cache.SHA256, data).String()
	for _, sc := range stores {
		t.Run(sc.name, func(t *testing.T) {
			st, dir := sc.open(t)
			h := New(Config{Store: st, Logger: zaptest.NewLogger(t), LocalPrefixes: []string{"team"}})
			srv := httptest.NewUnstartedServer(h)
			srv.EnableHTTP2 = true
			srv.StartTLS()
			t.Cleanup(func() {
				srv.Close()
				_ = h.Drain(context.Background())
			})
			client := srv.Client()
			for _, rng := range []string{"", "bytes=0-", "bytes=1-"} {
				resp, err := client.Post(srv.URL+"/v2/team/app/blobs/uploads/?digest="+d, "application/octet-stream", strings.NewReader(string(data)))
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusCreated {
					t.Fatalf("push: %s", resp.Status)
				}
				req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v2/team/app/blobs/"+d, nil)
				if rng != "" {
					req.Header.Set("Range", rng) // served by ServeContent
				}
				if resp, err = client.Do(req); err != nil {
					t.Fatal(err)
				}
				if resp.StatusCode/100 != 2 || resp.ProtoMajor != 2 {
					t.Fatalf("GET %q: %s over %s", rng, resp.Status, resp.Proto)
				}
				if err := os.Truncate(blobFile(dir, d), 1<<20); err != nil {
					t.Fatal(err)
				}
				n, err := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				switch {
				case err == nil:
					t.Fatalf("GET %q of a blob cut while served: %d of %d bytes and a clean end", rng, n, len(data))
				case errors.Is(err, io.ErrUnexpectedEOF) || !strings.Contains(err.Error(), "stream error"):
					t.Fatalf("GET %q of a blob cut while served: %d of %d bytes, %v; want the stream reset, not ended", rng, n, len(data), err)
				}
			}
		})
	}
}
