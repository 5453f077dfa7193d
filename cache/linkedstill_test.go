package cache

import (
	"errors"
	"fmt"
	"testing"
)

// TestPutManifestLinkedStill: a push's blobs, found linked before its put
// (Manifest.Linked), must still be linked when it commits: GC may drop a
// link between the registry's check and the put, and would then remove
// the blob under an acknowledged manifest. Such a put is refused with
// ErrBlobUnknown and stores nothing, create-only or not.
func TestPutManifestLinkedStill(t *testing.T) {
	s := openStore(t, Options{})
	layer := mustPut(t, s, []byte("layer"))
	mustLink(t, s, "r", layer)
	for _, createOnly := range []bool{false, true} {
		body := []byte(fmt.Sprintf(`{"schemaVersion":2,"layers":[{"digest":%q}],"n":%v}`, layer, createOnly))
		m := Manifest{Digest: digestOf(body), MediaType: "application/vnd.oci.image.manifest.v1+json", Linked: []Digest{layer}}
		putOrCreate := s.PutManifest
		if createOnly {
			putOrCreate = s.CreateManifest
		}
		if err := s.UnlinkBlob(t.Context(), "r", layer); err != nil && !errors.Is(err, ErrBlobUnknown) {
			t.Fatal(err)
		}
		tag := fmt.Sprint("create-only-", createOnly)
		err := putOrCreate(t.Context(), "r", m, body, []string{tag})
		if !errors.Is(err, ErrBlobUnknown) {
			t.Fatalf("put (create only: %v) over a dropped link: %v; want ErrBlobUnknown", createOnly, err)
		}
		if _, err := s.StatManifest(t.Context(), "r", m.Digest); !errors.Is(err, ErrManifestUnknown) {
			t.Fatalf("the refused put left its manifest: %v", err)
		}
		if _, err := s.ResolveTag(t.Context(), "r", tag); !errors.Is(err, ErrManifestUnknown) && !errors.Is(err, ErrTagUnknown) {
			t.Fatalf("the refused put left its tag: %v", err)
		}
		mustLink(t, s, "r", layer)
		if err := putOrCreate(t.Context(), "r", m, body, []string{tag}); err != nil {
			t.Fatalf("put (create only: %v) with its link: %v", createOnly, err)
		}
	}
}
