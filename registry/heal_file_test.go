package registry

import (
	"context"
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/caddy-oci/caddy-oci/cache"
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
			st, dir := newFolderStore(t)
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
				wantTransferBroken(t, resp, rng, len(data), blobFile(dir, d))
			}
		})
	}
}
