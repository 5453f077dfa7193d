package registry

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/caddy-oci/caddy-oci/cache"
)

// TestManifestPushOverLostBlob: a manifest pushed over a blob whose
// record outlived its bytes (its file removed or cut short behind the
// registry's back) is refused with 400 MANIFEST_BLOB_UNKNOWN, on the
// single node and on a folder under the composite store, and a real
// client's retry (go-containerregistry's remote.Write: HEAD each blob,
// push the missing, then the manifest) heals it: the image pulls whole.
// Before, the composite store accepted the manifest for either damage,
// the single node for the cut file: an image nobody could pull.
func TestManifestPushOverLostBlob(t *testing.T) {
	stores := []struct {
		name string
		open func(t *testing.T) (url, dir string)
	}{
		{"single node", func(t *testing.T) (string, string) {
			tr := newTestRegistry(t, func(c *Config) { c.LocalPrefixes = []string{"team"} })
			return tr.srv.URL, tr.dir
		}},
		{"folder", func(t *testing.T) (string, string) {
			fr := newFolderRegistry(t)
			return fr.srv.URL, fr.blob
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
				url, dir := st.open(t)
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
				layer, data := layerOf(t, img)
				if err := dm.damage(blobFile(dir, layer), data); err != nil {
					t.Fatal(err)
				}
				raw, _ := img.RawManifest()
				mt, _ := img.MediaType()
				req, _ := http.NewRequest(http.MethodPut, url+"/v2/team/app/manifests/v2", bytes.NewReader(raw))
				req.Header.Set("Content-Type", string(mt))
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusBadRequest || !bytes.Contains(body, []byte(`"MANIFEST_BLOB_UNKNOWN"`)) || !bytes.Contains(body, []byte(layer)) {
					t.Fatalf("manifest PUT over a blob %s: %s %s, want 400 MANIFEST_BLOB_UNKNOWN naming %s", dm.name, resp.Status, body, layer)
				}
				if err := remote.Write(ref("v2"), img); err != nil {
					t.Fatalf("push again: %v", err)
				}
				pulled, err := remote.Image(ref("v2"))
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
						t.Fatalf("layer %s pulled after the push again: %d bytes hashing to %s (%v)", want, len(b), got, err)
					}
				}
			})
		}
	}
}
