package registry

import (
	"bytes"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache"
)

// TestSparseIndex: an index whose children are not (all) in the
// repository is stored and served byte for byte; an absent child answers
// MANIFEST_UNKNOWN, and one pushed after its index is served as usual.
func TestSparseIndex(t *testing.T) {
	tr := newTestRegistry(t)
	repo := "sparse/idx"
	img := tr.image(repo, "layer-a")
	imgD := cache.FromBytes(cache.SHA256, img)
	absent := cache.FromBytes(cache.SHA256, []byte("never pushed"))
	index := mustJSON(t, map[string]any{"schemaVersion": 2, "mediaType": mtIndex, "manifests": []any{
		map[string]any{"mediaType": mtManifest, "digest": imgD.String(), "size": len(img),
			"platform": map[string]any{"os": "linux", "architecture": "amd64"}},
		map[string]any{"mediaType": mtManifest, "digest": absent.String(), "size": 1024,
			"platform": map[string]any{"os": "linux", "architecture": "arm64"}},
	}})
	indexD := cache.FromBytes(cache.SHA256, index)

	// The index comes first: neither child is here yet.
	tr.wantStatus(tr.pushManifest(repo, "multi", mtIndex, index), 201)
	got := tr.do("GET", "/v2/"+repo+"/manifests/multi", nil)
	tr.wantStatus(got, 200)
	if !bytes.Equal(got.body, index) || got.Header.Get("Docker-Content-Digest") != indexD.String() {
		t.Fatalf("index served as %q (%s), want the bytes pushed", got.body, got.Header.Get("Docker-Content-Digest"))
	}
	tr.wantError(tr.do("GET", "/v2/"+repo+"/manifests/"+absent.String(), nil), 404, CodeManifestUnknown)
	tr.wantError(tr.do("HEAD", "/v2/"+repo+"/manifests/"+imgD.String(), nil), 404, CodeManifestUnknown)

	// A child pushed after its index is an ordinary manifest.
	tr.wantStatus(tr.pushManifest(repo, imgD.String(), mtManifest, img), 201)
	got = tr.do("GET", "/v2/"+repo+"/manifests/"+imgD.String(), nil)
	tr.wantStatus(got, 200)
	if !bytes.Equal(got.body, img) {
		t.Fatalf("child served as %q", got.body)
	}
	tr.wantError(tr.do("GET", "/v2/"+repo+"/manifests/"+absent.String(), nil), 404, CodeManifestUnknown)
}

// TestSparseImage: an image manifest whose layer is missing is refused
// unless SparseManifests is set; with it, it is stored and the layer
// answers BLOB_UNKNOWN until pushed.
func TestSparseImage(t *testing.T) {
	missing := cache.FromBytes(cache.SHA256, []byte("layer never pushed"))
	for _, sparse := range []bool{false, true} {
		tr := newTestRegistry(t, func(c *Config) { c.SparseManifests = sparse })
		repo := "sparse/img"
		cfg := []byte(`{"architecture":"amd64","os":"linux"}`)
		cd := tr.pushBlob(repo, cfg)
		man := mustJSON(t, map[string]any{"schemaVersion": 2, "mediaType": mtManifest,
			"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.String(), "size": len(cfg)},
			"layers": []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": missing.String(), "size": 18}},
		})
		resp := tr.pushManifest(repo, "img", mtManifest, man)
		if !sparse {
			tr.wantError(resp, 400, CodeManifestBlobUnknown)
			tr.wantError(tr.do("GET", "/v2/"+repo+"/manifests/img", nil), 404, CodeManifestUnknown)
			continue
		}
		tr.wantStatus(resp, 201)
		got := tr.do("GET", "/v2/"+repo+"/manifests/img", nil)
		tr.wantStatus(got, 200)
		if !bytes.Equal(got.body, man) {
			t.Fatalf("sparse image served as %q", got.body)
		}
		tr.wantError(tr.do("GET", "/v2/"+repo+"/blobs/"+missing.String(), nil), 404, CodeBlobUnknown)
	}
}
