package registry

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"go.uber.org/zap/zaptest"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/readcache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/cache/composite"
	"github.com/caddy-oci/caddy-oci/cache/coord"
	"github.com/caddy-oci/caddy-oci/cache/metastore/badgermeta"
)

// TestManifestPushOverLostBlob: a manifest pushed over a blob whose
// record outlived its bytes (its file removed or cut short behind the
// registry's back) is refused with 400 MANIFEST_BLOB_UNKNOWN, on the
// single node, on a folder under the composite store and on S3 (with
// and without a read cache holding a copy), the HEAD that follows
// answers 404, and a real client's retry (go-containerregistry's
// remote.Write: HEAD each blob, push the missing, then the manifest)
// heals it: the image pulls whole. Before, the composite store accepted
// the manifest for either damage (on S3 until this check asked the
// bucket), the single node for the cut file: an image nobody could pull.
func TestManifestPushOverLostBlob(t *testing.T) {
	stores := []struct {
		name string
		// open starts the registry and returns its URL and where the file
		// of a blob is (versitygw keeps an object as a file in its folder).
		open func(t *testing.T) (url string, file func(digest string) string)
	}{
		{"single node", func(t *testing.T) (string, func(string) string) {
			tr := newTestRegistry(t, func(c *Config) { c.LocalPrefixes = []string{"team"} })
			return tr.srv.URL, func(d string) string { return blobFile(tr.dir, d) }
		}},
		{"folder", func(t *testing.T) (string, func(string) string) {
			fr := newFolderRegistry(t)
			return fr.srv.URL, func(d string) string { return blobFile(fr.blob, d) }
		}},
		{"s3", func(t *testing.T) (string, func(string) string) {
			sr := newS3Registry(t, false)
			return sr.srv.URL, sr.object
		}},
		// The read cache holds a copy of every layer (the pull before
		// the damage): the check asks the bucket, and the HEAD that
		// follows must not answer 200 from the copy.
		{"s3 with read cache", func(t *testing.T) (string, func(string) string) {
			sr := newS3Registry(t, true)
			return sr.srv.URL, sr.object
		}},
	}
	damages := []struct {
		name   string
		damage func(path string, data []byte) error
	}{
		{"removed", func(path string, _ []byte) error { return os.Remove(path) }},
		{"cut short", func(path string, data []byte) error { return os.WriteFile(path, data[:len(data)-1], 0o644) }},
	}
	for _, st := range stores {
		for _, dm := range damages {
			t.Run(st.name+"/"+dm.name, func(t *testing.T) {
				url, file := st.open(t)
				host := strings.TrimPrefix(url, "http://")
				img := randomImage(t, 32<<10, 2)
				ref := func(tag string) name.Reference {
					r, err := name.ParseReference(host+"/team/app:"+tag, name.Insecure)
					if err != nil {
						t.Fatal(err)
					}
					return r
				}
				if err := remote.Write(ref("v1"), img); err != nil {
					t.Fatal(err)
				}
				pullWhole(t, ref("v1")) // a read cache keeps copies
				layer, data := layerOf(t, img)
				if _, err := os.Stat(file(layer)); err != nil {
					t.Fatalf("the layer's file: %v", err)
				}
				if err := dm.damage(file(layer), data); err != nil {
					t.Fatal(err)
				}
				resp, body := putImageManifest(t, url+"/v2/team/app/manifests/v2", img)
				if resp.StatusCode != http.StatusBadRequest || !bytes.Contains(body, []byte(`"MANIFEST_BLOB_UNKNOWN"`)) || !bytes.Contains(body, []byte(layer)) {
					t.Fatalf("manifest PUT over a blob %s: %s %s, want 400 MANIFEST_BLOB_UNKNOWN naming %s", dm.name, resp.Status, body, layer)
				}
				// What the client asks next, and pushes the blob on a 404.
				head, _ := http.NewRequest(http.MethodHead, url+"/v2/team/app/blobs/"+layer, nil)
				hresp, err := http.DefaultClient.Do(head)
				if err != nil {
					t.Fatal(err)
				}
				hresp.Body.Close()
				if hresp.StatusCode != http.StatusNotFound {
					t.Fatalf("HEAD of the blob %s after the refusal: %s, want 404", dm.name, hresp.Status)
				}
				if err := remote.Write(ref("v2"), img); err != nil {
					t.Fatalf("push again: %v", err)
				}
				pullWhole(t, ref("v2"))
			})
		}
	}
}

// pullWhole pulls the image ref and reads every layer whole, each of
// which must hash to its digest.
func pullWhole(t *testing.T, ref name.Reference) {
	t.Helper()
	pulled, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := pulled.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		want, _ := l.Digest()
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if got := cache.FromBytes(cache.SHA256, b).String(); err != nil || got != want.String() {
			t.Fatalf("layer %s of %s pulled: %d bytes hashing to %s (%v)", want, ref, len(b), got, err)
		}
	}
}

// s3Registry is a registry on the composite store over a versitygw
// bucket (badger metadata), optionally behind a read cache.
type s3Registry struct {
	srv    *httptest.Server
	gw     *s3test.Server
	dir    string // versitygw's folder: one file per object
	bucket string
}

func newS3Registry(t *testing.T, readCache bool) *s3Registry {
	t.Helper()
	dir := t.TempDir()
	gw := s3test.StartIn(t, dir)
	bucket := gw.Bucket(t)
	s3blobs, err := s3.New(context.Background(), s3.Config{
		Bucket: bucket, Endpoint: gw.Endpoint, Region: gw.Region, Prefix: "reg/",
		AccessKey: gw.AccessKey, SecretKey: gw.SecretKey, PathStyle: true,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var blobs blobstore.Store = s3blobs
	if readCache {
		if blobs, err = readcache.New(s3blobs, readcache.Options{Dir: t.TempDir(), MaxBytes: 64 << 20}); err != nil {
			t.Fatal(err)
		}
	}
	meta, err := badgermeta.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st, err := composite.New(composite.Options{Blobs: blobs, Meta: meta, Leases: coord.NewLocal()})
	if err != nil {
		t.Fatal(err)
	}
	h := New(Config{Store: st, Logger: zaptest.NewLogger(t), LocalPrefixes: []string{"team"}})
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		srv.Close()
		_ = h.Drain(context.Background())
		st.Close()
		_ = meta.Close()
	})
	return &s3Registry{srv: srv, gw: gw, dir: dir, bucket: bucket}
}

// object is the file of blob digest's object in versitygw's folder.
func (sr *s3Registry) object(digest string) string {
	return filepath.Join(sr.dir, sr.bucket, "reg", "blobs", "sha256", digest[7:9], digest[7:])
}

// TestManifestPushLostBlobsInOrder: a manifest's blobs are checked
// concurrently (on S3 each is a HEAD), and the refusal still names the
// first lost one in the manifest's order, as one check after another
// would: with more layers than checks run at once, and several lost.
func TestManifestPushLostBlobsInOrder(t *testing.T) {
	sr := newS3Registry(t, false)
	host := strings.TrimPrefix(sr.srv.URL, "http://")
	img := randomImage(t, 1<<10, 2*blobChecks+3)
	ref, err := name.ParseReference(host+"/team/app:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var layers []string
	for _, l := range ls {
		d, _ := l.Digest()
		layers = append(layers, d.String())
	}
	for _, i := range []int{blobChecks + 1, 3, len(layers) - 1} {
		if err := os.Remove(sr.object(layers[i])); err != nil {
			t.Fatal(err)
		}
	}
	for range 5 {
		resp, body := putImageManifest(t, sr.srv.URL+"/v2/team/app/manifests/v2", img)
		if resp.StatusCode != http.StatusBadRequest || !bytes.Contains(body, []byte(`"MANIFEST_BLOB_UNKNOWN"`)) || !bytes.Contains(body, []byte(layers[3])) {
			t.Fatalf("manifest PUT over lost layers 3, %d and %d: %s %s, want 400 MANIFEST_BLOB_UNKNOWN naming layers[3] %s",
				blobChecks+1, len(layers)-1, resp.Status, body, layers[3])
		}
	}
}

// TestManifestPushS3Down: a manifest push whose blobs the bucket cannot
// be asked about (unreachable) answers 503 UNAVAILABLE, which a client
// retries, never MANIFEST_BLOB_UNKNOWN, which would send it pushing
// blobs the bucket holds.
func TestManifestPushS3Down(t *testing.T) {
	sr := newS3Registry(t, true)
	host := strings.TrimPrefix(sr.srv.URL, "http://")
	img := randomImage(t, 4<<10, 3)
	ref, err := name.ParseReference(host+"/team/app:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	pullWhole(t, ref) // copies in the read cache, which must not answer
	sr.gw.Kill()
	resp, body := putImageManifest(t, sr.srv.URL+"/v2/team/app/manifests/v2", img)
	if resp.StatusCode != http.StatusServiceUnavailable || !bytes.Contains(body, []byte(`"UNAVAILABLE"`)) || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("manifest PUT with the bucket down: %s %s (Retry-After %q), want 503 UNAVAILABLE with Retry-After",
			resp.Status, body, resp.Header.Get("Retry-After"))
	}
}

// putImageManifest PUTs img's manifest at url and answers the response
// (its body read and closed) and the body.
func putImageManifest(t *testing.T, url string, img v1.Image) (*http.Response, []byte) {
	t.Helper()
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	mt, err := img.MediaType()
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPut, url, bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", string(mt))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, body
}
