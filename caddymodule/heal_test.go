package caddymodule

import (
	"bytes"
	"crypto/rand"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
)

// TestS3BlobLostOrDamagedHeals: on replicas (PostgreSQL, S3), a blob
// whose object is deleted or cut short behind the registry's back heals
// instead of failing for ever. Mirrored: the next GET fetches it from
// upstream again (once) and serves it; the client never sees the loss.
// Pushed: HEAD and GET answer 404 BLOB_UNKNOWN (it was 503 on every GET
// of a cut object), so a client that HEADs before pushing uploads it
// again, and that push replaces the object. With and without the read
// cache in front of S3.
func TestS3BlobLostOrDamagedHeals(t *testing.T) {
	for _, tc := range []struct{ name, extra string }{
		{"plain", ""},
		{"readcache", "\t\t\tcache " + t.TempDir() + " 64MiB\n"},
		// A GET of a stored blob answers 307 to S3: the registry must
		// find the loss before it sends the client there.
		{"redirect", "\t\t\tredirect 2m\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var upGets atomic.Int64
			reg := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
			upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
					upGets.Add(1)
				}
				reg.ServeHTTP(w, r)
			}))
			defer upstream.Close()
			layer, err := random.Layer(300<<10, types.OCILayer)
			if err != nil {
				t.Fatal(err)
			}
			upRepo, _ := name.NewRepository(strings.TrimPrefix(upstream.URL, "http://")+"/library/app", name.Insecure)
			if err := remote.WriteLayer(upRepo, layer); err != nil {
				t.Fatal(err)
			}
			d, _ := layer.Digest()
			rc, _ := layer.Compressed()
			want, _ := io.ReadAll(rc)

			srv := s3test.Start(t)
			bucket := srv.Bucket(t)
			base := s3ReadsSiteWith(t, srv, bucket, "\t\tmirror docker.io {\n\t\t\tupstream "+upstream.URL+"\n\t\t}\n", tc.extra)
			url := base + "/v2/docker.io/library/app/blobs/" + d.String()
			key := func(d string) string { return "reg/blobs/sha256/" + d[7:9] + "/" + d[7:] }

			get := func(what string, fetches int64) {
				t.Helper()
				r := followedGet(t, url, false)
				body, err := io.ReadAll(r.Body)
				if r.StatusCode != http.StatusOK || err != nil || !bytes.Equal(body, want) {
					t.Fatalf("GET of a mirrored blob %s: %s, %d bytes (%v)", what, r.Status, len(body), err)
				}
				if n := upGets.Load(); n != fetches {
					t.Fatalf("GET of a mirrored blob %s: %d upstream GETs, want %d", what, n, fetches)
				}
			}
			// A GET may end while its fill commits (the upload to S3);
			// a HEAD answers once the commit ended, so that what the
			// test does to the object next is not undone by it.
			committed := func() {
				t.Helper()
				if r := blobRequest(t, http.MethodHead, url, false, ""); r.StatusCode != http.StatusOK {
					t.Fatalf("HEAD of a mirrored blob: %s", r.Status)
				}
			}
			get("cold", 1)
			get("warm", 1)
			committed()

			// The read cache keeps no copy of a blob a fill wrote; a
			// GET through it may have made one: the cases below are
			// about S3's object, so they run where no copy serves.
			srv.Delete(t, bucket, key(d.String()))
			if tc.name != "readcache" {
				if r := blobRequest(t, http.MethodHead, url, false, ""); r.StatusCode != http.StatusOK || r.ContentLength != int64(len(want)) {
					t.Fatalf("HEAD of a mirrored blob S3 lost: %s, %d bytes", r.Status, r.ContentLength)
				}
				get("that S3 lost", 2)
				get("fetched again", 2)
				committed()
				srv.Put(t, bucket, key(d.String()), want[:len(want)/3])
				get("whose object was cut short", 3)
				get("fetched again after the cut", 3)
			} else {
				// A copy or a fetch again: the client never sees the loss.
				for _, what := range []string{"that S3 lost", "whose object was cut short"} {
					r := blobRequest(t, http.MethodGet, url, false, "")
					if body, err := io.ReadAll(r.Body); r.StatusCode != http.StatusOK || err != nil || !bytes.Equal(body, want) {
						t.Fatalf("GET of a mirrored blob %s: %s, %d bytes (%v)", what, r.Status, len(body), err)
					}
					srv.Put(t, bucket, key(d.String()), want[:len(want)/3])
				}
			}

			// Pushed: answers as lost, and a push again replaces it.
			c := make([]byte, 200<<10)
			rand.Read(c)
			pd := pushBlob(t, base, "team/app", c)
			srv.Put(t, bucket, key(pd), c[:len(c)-1])
			purl := base + "/v2/team/app/blobs/" + pd
			for _, m := range []string{http.MethodHead, http.MethodGet} {
				if r := blobRequest(t, m, purl, true, ""); r.StatusCode != http.StatusNotFound {
					t.Fatalf("%s of a pushed blob whose object was cut short: %s, want 404", m, r.Status)
				}
			}
			pushBlob(t, base, "team/app", c)
			r := followedGet(t, purl, true)
			if body, err := io.ReadAll(r.Body); err != nil || r.StatusCode != http.StatusOK || !bytes.Equal(body, c) {
				t.Fatalf("GET after the cut blob was pushed again: %s, %d bytes (%v)", r.Status, len(body), err)
			}
		})
	}
}

// followedGet GETs url as a client does, following a redirect to the
// storage (which needs no credentials: the URL is one).
func followedGet(t *testing.T, url string, user bool) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if user {
		req.SetBasicAuth("ci", "pw")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}
