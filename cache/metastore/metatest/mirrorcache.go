package metatest

// The contract of metastore.MirrorCache: last uses, the listing an
// eviction pass counts, the eviction that checks again, and the shared
// figure of mirrored bytes.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/metastore"
)

func mirrorCacheTests() []namedTest {
	return []namedTest{
		{"MirrorBlobUses", testBlobUses},
		{"MirrorEvictBlobs", testEvictBlobs},
		{"MirrorEvictRacesLink", testEvictRacesLink},
		{"MirrorEvictWidelyLinked", testEvictWidelyLinked},
		{"MirrorBytes", testMirrorBytes},
		{"UploadBytes", testUploadBytes},
		{"ConcurrentUploadBytes", testConcurrentUploadBytes},
	}
}

type namedTest struct {
	name string
	run  func(t *testing.T, s metastore.Store)
}

// uses lists every blob by pages of n.
func uses(t *testing.T, s metastore.Store, n int) map[metastore.Digest]metastore.BlobUse {
	t.Helper()
	out := map[metastore.Digest]metastore.BlobUse{}
	var after metastore.Digest
	for {
		us, err := s.BlobUses(ctx(t), after, n)
		must(t, err)
		if len(us) == 0 {
			return out
		}
		for i, u := range us {
			if i > 0 && us[i-1].Digest.String() >= u.Digest.String() {
				t.Fatalf("BlobUses out of order: %s then %s", us[i-1].Digest, u.Digest)
			}
			if _, dup := out[u.Digest]; dup {
				t.Fatalf("BlobUses listed %s twice", u.Digest)
			}
			out[u.Digest] = u
		}
		after = us[len(us)-1].Digest
	}
}

func testBlobUses(t *testing.T, s metastore.Store) {
	a := link(t, s, "mirror/x", "a", 0)
	b := link(t, s, "mirror/x", "b", 0)
	must(t, s.LinkBlob(ctx(t), "local", b, at(1)))
	c, err := s.RecordBlob(ctx(t), dg("c"), 1, at(2))
	must(t, err)
	m, body := manifest("m", metastore.Digest{})
	_, err = s.RecordBlob(ctx(t), m.Digest, int64(len(body)), at(0))
	must(t, err)
	put(t, s, "mirror/x", m, body)

	must(t, s.RecordUses(ctx(t), map[metastore.Digest]time.Time{a: at(10), dg("unknown"): at(10)}))
	// Never back.
	must(t, s.RecordUses(ctx(t), map[metastore.Digest]time.Time{a: at(5), b: at(7)}))
	must(t, s.RecordUses(ctx(t), nil))

	got := uses(t, s, 2)
	if len(got) != 4 {
		t.Fatalf("BlobUses listed %d blobs, want 4 (the unknown use makes no record)", len(got))
	}
	for _, w := range []struct {
		d        metastore.Digest
		used     time.Time
		repos    []string
		manifest bool
	}{
		{a, at(10), []string{"mirror/x"}, false},
		{b, at(7), []string{"local", "mirror/x"}, false},
		{c.Digest, at(2), nil, false}, // never read: its touch
		{m.Digest, at(0), nil, true},
	} {
		u := got[w.d]
		if !u.Used.Equal(w.used) || !slices.Equal(u.Repos, w.repos) || u.Manifest != w.manifest {
			t.Errorf("%s: used %v, repos %q, manifest %v; want %v, %q, %v", w.d, u.Used, u.Repos, u.Manifest, w.used, w.repos, w.manifest)
		}
	}
	if u := got[a]; u.Size != 1 || !u.Touched.Equal(at(0)) {
		t.Errorf("record of a: %+v", u.BlobRecord)
	}
	// Pushed again later than its last read: the touch is the last use.
	_, err = s.RecordBlob(ctx(t), a, 1, at(20))
	must(t, err)
	if u := uses(t, s, 10)[a]; !u.Used.Equal(at(20)) {
		t.Errorf("a recorded at 20, used %v", u.Used)
	}
	wantErr(t, "RecordUses of an invalid digest", s.RecordUses(ctx(t), map[metastore.Digest]time.Time{{Algorithm: "sha256", Hex: "nope"}: at(1)}), metastore.ErrDigestInvalid)
}

func testEvictBlobs(t *testing.T, s metastore.Store) {
	mirrors := []string{"mirror/x", "mirror/y"}
	evict := link(t, s, "mirror/x", "evict", 0)
	must(t, s.LinkBlob(ctx(t), "mirror/y", evict, at(0)))
	pushed := link(t, s, "mirror/x", "pushed", 0)
	must(t, s.LinkBlob(ctx(t), "local", pushed, at(0)))
	unlinked, err := s.RecordBlob(ctx(t), dg("unlinked"), 8, at(0))
	must(t, err)
	read := link(t, s, "mirror/x", "read", 0)
	other := link(t, s, "mirror/x", "other", 0)

	// What the caller saw; then things change.
	es := []metastore.Eviction{
		{Digest: evict, Repos: mirrors, Used: at(0)},
		{Digest: pushed, Repos: mirrors, Used: at(0)},
		{Digest: unlinked.Digest, Repos: mirrors, Used: at(0)},
		{Digest: read, Repos: mirrors, Used: at(0)},
		{Digest: other, Repos: []string{"mirror/x"}, Used: at(0)},
		{Digest: dg("never recorded"), Repos: mirrors, Used: at(0)},
	}
	must(t, s.RecordUses(ctx(t), map[metastore.Digest]time.Time{read: at(3)}))
	must(t, s.LinkBlob(ctx(t), "mirror/z", other, at(1)))
	// Bytes held as a blob and as a manifest: the manifest keeps them.
	m, body := manifest("held", metastore.Digest{})
	_, err = s.RecordBlob(ctx(t), m.Digest, int64(len(body)), at(0))
	must(t, err)
	must(t, s.LinkBlob(ctx(t), "mirror/x", m.Digest, at(0)))
	put(t, s, "mirror/x", m, body)
	es = append(es, metastore.Eviction{Digest: m.Digest, Repos: mirrors, Used: at(0)})

	marked, err := s.EvictBlobs(ctx(t), es)
	must(t, err)
	if len(marked) != 1 || marked[0].Digest != evict || marked[0].Size != int64(len("evict")) {
		t.Fatalf("evicted %v; want only %s (not the pushed, unlinked, read since, linked by another, or manifest one)", marked, evict)
	}
	_, err = s.Blob(ctx(t), evict)
	wantErr(t, "Blob of an evicted blob", err, metastore.ErrBlobUnknown)
	for _, repo := range mirrors {
		_, _, err = s.BlobLink(ctx(t), repo, evict)
		wantErr(t, "BlobLink of an evicted blob", err, metastore.ErrBlobUnknown)
	}
	if repos, err := s.ReposWithBlob(ctx(t), evict, 0); err != nil || len(repos) != 0 {
		t.Fatalf("links left to an evicted blob: %v, %v", repos, err)
	}
	_, err = s.RecordBlob(ctx(t), evict, 5, at(9))
	wantErr(t, "RecordBlob of an evicted blob before ForgetBlobs", err, metastore.ErrBlobDeleting)
	if _, ok := uses(t, s, 10)[evict]; ok {
		t.Fatal("an evicted blob is listed by BlobUses")
	}
	del, err := s.DeletingBlobs(ctx(t), metastore.Digest{}, 10)
	must(t, err)
	if len(del) != 1 || del[0].Digest != evict {
		t.Fatalf("deleting = %v, want %s (GC finishes an eviction that died)", del, evict)
	}
	for _, d := range []metastore.Digest{pushed, read, other, m.Digest} {
		if _, _, err := s.BlobLink(ctx(t), "mirror/x", d); err != nil {
			t.Errorf("%s lost its link: %v", d, err)
		}
	}
	must(t, s.ForgetBlobs(ctx(t), []metastore.Digest{evict}))
	// Filled again: a new blob, whose last use is its record's.
	_, err = s.RecordBlob(ctx(t), evict, 5, at(30))
	must(t, err)
	if u := uses(t, s, 10)[evict]; !u.Used.Equal(at(30)) || len(u.Repos) != 0 {
		t.Fatalf("filled again: %+v", u)
	}
	marked, err = s.EvictBlobs(ctx(t), nil)
	if err != nil || len(marked) != 0 {
		t.Fatalf("EvictBlobs(nil) = %v, %v", marked, err)
	}
}

// testEvictWidelyLinked: a layer may be linked by thousands of mirrored
// repositories, more links than one transaction of some backends holds;
// it is evicted all the same, beside the others of its batch, and one a
// local repository links as well keeps that link.
func testEvictWidelyLinked(t *testing.T, s metastore.Store) {
	const n = 8500 // badgermeta's transactions hold about 15,000 writes
	wide := link(t, s, "mirror/0", "wide", 0)
	kept := link(t, s, "mirror/0", "kept", 0)
	small := link(t, s, "mirror/0", "small", 0)
	repos := []string{"mirror/0"}
	for i := 1; i < n; i++ {
		repo := fmt.Sprintf("mirror/%d", i)
		repos = append(repos, repo)
		must(t, s.LinkBlob(ctx(t), repo, wide, at(0)))
		if i < 10 {
			must(t, s.LinkBlob(ctx(t), repo, kept, at(0)))
		}
	}
	must(t, s.LinkBlob(ctx(t), "local", kept, at(0)))
	marked, err := s.EvictBlobs(ctx(t), []metastore.Eviction{
		{Digest: small, Repos: repos, Used: at(0)},
		{Digest: wide, Repos: repos, Used: at(0)},
		{Digest: kept, Repos: repos, Used: at(0)},
	})
	must(t, err)
	var got []metastore.Digest
	for _, m := range marked {
		got = append(got, m.Digest)
	}
	if len(got) != 2 || !slices.Contains(got, wide) || !slices.Contains(got, small) {
		t.Fatalf("evicted %v, want %s and %s", got, wide, small)
	}
	if r, err := s.ReposWithBlob(ctx(t), wide, 0); err != nil || len(r) != 0 {
		t.Fatalf("%d links left to the evicted blob (%v)", len(r), err)
	}
	if _, _, err := s.BlobLink(ctx(t), "local", kept); err != nil {
		t.Fatalf("the local link of a blob kept went: %v", err)
	}
}

// testEvictRacesLink: a pushed repository's link and an eviction of one
// mirrored blob at once never both win.
func testEvictRacesLink(t *testing.T, s metastore.Store) {
	for i := range 20 {
		d := link(t, s, "mirror/x", fmt.Sprint("race", i), 0)
		var marked []metastore.BlobRecord
		errs := start(2, func(j int) error {
			if j == 0 {
				return s.LinkBlob(context.Background(), "local", d, at(0))
			}
			var err error
			marked, err = s.EvictBlobs(context.Background(), []metastore.Eviction{{Digest: d, Repos: []string{"mirror/x"}, Used: at(0)}})
			return err
		})
		must(t, errs[1])
		switch {
		case errs[0] == nil && len(marked) == 0:
		case errors.Is(errs[0], metastore.ErrBlobUnknown) && len(marked) == 1:
		default:
			t.Fatalf("race %d: link %v, evicted %d: a pushed link to a blob being deleted", i, errs[0], len(marked))
		}
	}
}

func testMirrorBytes(t *testing.T, s metastore.Store) {
	for _, step := range []struct{ add, want int64 }{{0, 0}, {100, 100}, {-30, 70}, {0, 70}, {-1000, 0}} {
		got, err := s.AddMirrorBytes(ctx(t), step.add)
		must(t, err)
		if got != step.want {
			t.Fatalf("AddMirrorBytes(%d) = %d, want %d", step.add, got, step.want)
		}
	}
	errs := start(20, func(int) error { _, err := s.AddMirrorBytes(context.Background(), 3); return err })
	for _, err := range errs {
		must(t, err)
	}
	if got, err := s.AddMirrorBytes(ctx(t), 0); err != nil || got != 60 {
		t.Fatalf("after 20 concurrent adds of 3: %d, %v; want 60", got, err)
	}
}
