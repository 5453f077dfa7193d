// Package manifesttest is the contract of a registry store's manifest
// writes that a push which may only create relies on (CreateManifest),
// as one suite every store runs: the single-node cache.Store, and the
// scaled-out composite store on each metadata backend, where two
// replicas are two stores on one database. The metadata backends keep
// the same contract a level down (metatest); this holds the layers above
// them to it.
package manifesttest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache"
)

// Store is what the suite asks of a store.
type Store interface {
	PutManifest(ctx context.Context, repo string, m cache.Manifest, body []byte, tags []string) error
	CreateManifest(ctx context.Context, repo string, m cache.Manifest, body []byte, tags []string) error
	StatManifest(ctx context.Context, repo string, d cache.Digest) (cache.Manifest, error)
	ResolveTag(ctx context.Context, repo, tag string) (cache.Digest, error)
	Tags(ctx context.Context, repo, last string, n int) ([]string, bool, error)
}

// Replicas returns a new store of the replica set being tested, on the
// same data as every other it returned in this test (a single node
// returns itself).
type Replicas func() Store

// Run runs the suite, each test against a fresh replica set from open.
func Run(t *testing.T, open func(t *testing.T) Replicas) {
	for _, tt := range []struct {
		name string
		run  func(t *testing.T, a, b Store)
	}{
		{"RefusedOverAnotherReplicasTag", testRefusedOverTag},
		{"RefusedRetype", testRefusedRetype},
		{"AcceptedOverItsOwnTags", testAccepted},
		{"ConcurrentCreatesOneWinner", testConcurrent},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := open(t)
			tt.run(t, r(), r())
		})
	}
}

const ociManifest = "application/vnd.oci.image.manifest.v1+json"

func manifest(name string) (cache.Manifest, []byte) {
	body := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"annotations":{"name":%q}}`, ociManifest, name))
	return cache.Manifest{Digest: cache.FromBytes(cache.SHA256, body), MediaType: ociManifest}, body
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func tags(t *testing.T, s Store, repo string) []string {
	t.Helper()
	got, _, err := s.Tags(ctx(t), repo, "", -1)
	must(t, err)
	return got
}

// testRefusedOverTag: a maintainer released v1 through replica a; a
// create-only push of another manifest through b, naming v1 among its
// tags, is refused with cache.ErrTagMoved and leaves nothing: v1 stays,
// its other tags and its manifest are not written.
func testRefusedOverTag(t *testing.T, a, b Store) {
	rel, relBody := manifest("release")
	must(t, a.PutManifest(ctx(t), "app", rel, relBody, []string{"v1"}))
	evil, evilBody := manifest("evil")
	err := b.CreateManifest(ctx(t), "app", evil, evilBody, []string{"new", "v1"})
	if !errors.Is(err, cache.ErrTagMoved) {
		t.Fatalf("create over a released tag: %v, want cache.ErrTagMoved", err)
	}
	if d, err := a.ResolveTag(ctx(t), "app", "v1"); err != nil || d != rel.Digest {
		t.Fatalf("v1 at %s (%v), want the release %s", d, err, rel.Digest)
	}
	if got := tags(t, a, "app"); !slices.Equal(got, []string{"v1"}) {
		t.Fatalf("tags after the refusal = %q", got)
	}
	if _, err := a.StatManifest(ctx(t), "app", evil.Digest); !errors.Is(err, cache.ErrManifestUnknown) {
		t.Fatalf("the refused manifest: %v, want unknown", err)
	}
	// The update, which the registry writes once the policy allows it.
	must(t, b.PutManifest(ctx(t), "app", evil, evilBody, []string{"new", "v1"}))
	if d, err := a.ResolveTag(ctx(t), "app", "v1"); err != nil || d != evil.Digest {
		t.Fatalf("v1 after the update at %s (%v)", d, err)
	}
}

// testRefusedRetype: the bytes a repository holds, pushed again as a
// create under another media type, are refused with
// cache.ErrManifestRetyped; the manifest keeps its type, and the push's
// tags are not made.
func testRefusedRetype(t *testing.T, a, b Store) {
	m, body := manifest("m")
	must(t, a.PutManifest(ctx(t), "app", m, body, []string{"v1"}))
	idx := m
	idx.MediaType = "application/vnd.oci.image.index.v1+json"
	for _, tt := range [][]string{nil, {"v1"}, {"fresh"}} {
		if err := b.CreateManifest(ctx(t), "app", idx, body, tt); !errors.Is(err, cache.ErrManifestRetyped) {
			t.Fatalf("create as an index (tags %q): %v, want cache.ErrManifestRetyped", tt, err)
		}
	}
	if got, err := a.StatManifest(ctx(t), "app", m.Digest); err != nil || got.MediaType != ociManifest {
		t.Fatalf("after refused retypes: %+v %v", got, err)
	}
	if got := tags(t, a, "app"); !slices.Equal(got, []string{"v1"}) {
		t.Fatalf("tags after the refusals = %q", got)
	}
}

// testAccepted: a create of new tags, and again over tags already at its
// manifest, is written like a put.
func testAccepted(t *testing.T, a, b Store) {
	m, body := manifest("m")
	must(t, a.CreateManifest(ctx(t), "app", m, body, []string{"v1"}))
	must(t, b.CreateManifest(ctx(t), "app", m, body, []string{"v1", "latest"}))
	for _, tag := range []string{"v1", "latest"} {
		if d, err := a.ResolveTag(ctx(t), "app", tag); err != nil || d != m.Digest {
			t.Fatalf("%s at %s (%v)", tag, d, err)
		}
	}
	if got, err := b.StatManifest(ctx(t), "app", m.Digest); err != nil || got.MediaType != ociManifest || got.Size != int64(len(body)) {
		t.Fatalf("manifest = %+v %v", got, err)
	}
}

// testConcurrent: replicas in turn create one tag with manifests of
// their own, at once: exactly one is written, the tag points at it, the
// others are told the tag moved.
func testConcurrent(t *testing.T, a, b Store) {
	const n = 8
	for round := range 3 {
		tag := fmt.Sprint("v", round)
		errs := make([]error, n)
		ms := make([]cache.Manifest, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			m, body := manifest(fmt.Sprint(round, "-", i))
			ms[i] = m
			s := a
			if i%2 == 1 {
				s = b
			}
			wg.Go(func() {
				<-start
				errs[i] = s.CreateManifest(context.Background(), "app", m, body, []string{tag})
			})
		}
		close(start)
		wg.Wait()
		winner := -1
		for i, err := range errs {
			switch {
			case err == nil && winner >= 0:
				t.Fatalf("round %d: creates %d and %d both succeeded", round, winner, i)
			case err == nil:
				winner = i
			case !errors.Is(err, cache.ErrTagMoved):
				t.Fatalf("round %d: create %d: %v, want cache.ErrTagMoved", round, i, err)
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: no create succeeded", round)
		}
		if d, err := b.ResolveTag(ctx(t), "app", tag); err != nil || d != ms[winner].Digest {
			t.Fatalf("round %d: %s at %s (%v), want the winner's %s", round, tag, d, err, ms[winner].Digest)
		}
	}
}
