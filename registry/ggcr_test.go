package registry

import (
	"bytes"
	"net/url"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestRoundTripGGCR pushes a random multi-platform image with
// go-containerregistry and pulls it back, comparing digests and the raw
// manifest bytes of the index and of every child.
func TestRoundTripGGCR(t *testing.T) {
	tr := newTestRegistry(t)
	u, err := url.Parse(tr.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := random.Index(2048, 3, 3)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(u.Host+"/ggcr/multi:latest", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatalf("WriteIndex: %v", err)
	}

	got, err := remote.Index(ref)
	if err != nil {
		t.Fatalf("Index: %v", err)
	}
	wantDigest, _ := idx.Digest()
	gotDigest, err := got.Digest()
	if err != nil || gotDigest != wantDigest {
		t.Fatalf("index digest %v (%v), want %v", gotDigest, err, wantDigest)
	}
	wantRaw, _ := idx.RawManifest()
	gotRaw, err := got.RawManifest()
	if err != nil || !bytes.Equal(gotRaw, wantRaw) {
		t.Fatalf("index bytes differ (%v)", err)
	}

	im, _ := idx.IndexManifest()
	for _, desc := range im.Manifests {
		childRef := ref.Context().Digest(desc.Digest.String())
		img, err := remote.Image(childRef)
		if err != nil {
			t.Fatalf("Image %s: %v", desc.Digest, err)
		}
		want, _ := idx.Image(desc.Digest)
		compareImages(t, want, img)
	}

	// single image by tag, then pulled through the tag
	single, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	sref, _ := name.ParseReference(u.Host+"/ggcr/single:v1", name.Insecure)
	if err := remote.Write(sref, single); err != nil {
		t.Fatalf("Write: %v", err)
	}
	pulled, err := remote.Image(sref)
	if err != nil {
		t.Fatalf("Image: %v", err)
	}
	compareImages(t, single, pulled)

	tags, err := remote.List(ref.Context())
	if err != nil || len(tags) != 1 || tags[0] != "latest" {
		t.Errorf("List: %v %v", tags, err)
	}
}

func compareImages(t *testing.T, want, got v1.Image) {
	t.Helper()
	wd, _ := want.Digest()
	gd, err := got.Digest()
	if err != nil || wd != gd {
		t.Fatalf("image digest %v (%v), want %v", gd, err, wd)
	}
	wr, _ := want.RawManifest()
	gr, err := got.RawManifest()
	if err != nil || !bytes.Equal(wr, gr) {
		t.Fatalf("manifest bytes differ (%v)", err)
	}
	wl, _ := want.Layers()
	gl, err := got.Layers()
	if err != nil || len(gl) != len(wl) {
		t.Fatalf("layers: %d (%v), want %d", len(gl), err, len(wl))
	}
	for i := range wl {
		wdg, _ := wl[i].Digest()
		rc, err := gl[i].Compressed()
		if err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		h, _, err := v1.SHA256(rc)
		rc.Close()
		if err != nil || h != wdg {
			t.Fatalf("layer %d digest %v (%v), want %v", i, h, err, wdg)
		}
	}
}
