package cache

import (
	"fmt"
	"sync"
	"testing"
)

// TestManifestUnderManyTagsAtOnce: 50 writers push one manifest under
// tags of their own at once (CI jobs tagging one image), 20 tags each;
// every push succeeds and every tag points at the manifest. Each push
// rewrites the manifest's record, so concurrent ones conflict; retried
// all together 16 times, two pushes in three still failed (a 500).
func TestManifestUnderManyTagsAtOnce(t *testing.T) {
	s := openStore(t, Options{})
	body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:` +
		"0000000000000000000000000000000000000000000000000000000000000000" + `","size":2},"layers":[]}`)
	m := Manifest{Digest: digestOf(body), MediaType: "application/vnd.oci.image.manifest.v1+json"}
	const writers, each = 50, 20
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if err := s.PutManifest(t.Context(), "ci/app", m, body, []string{fmt.Sprintf("w%d-%d", w, i)}); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	n := 0
	for err := range errs {
		if n == 0 {
			t.Errorf("PutManifest: %v", err)
		}
		n++
	}
	if n > 0 {
		t.Fatalf("%d of %d pushes failed", n, writers*each)
	}
	for w := range writers {
		for i := range each {
			if d, err := s.ResolveTag(t.Context(), "ci/app", fmt.Sprintf("w%d-%d", w, i)); err != nil || d != m.Digest {
				t.Fatalf("tag w%d-%d: %s, %v", w, i, d, err)
			}
		}
	}
}
