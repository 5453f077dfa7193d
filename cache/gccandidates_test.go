package cache

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// gcPass runs GC and checks whether it was a full pass.
func gcPass(t *testing.T, s *Store, full bool) GCStats {
	t.Helper()
	st := mustGC(t, s)
	if st.Full != full {
		t.Fatalf("GC full = %v, want %v (%+v)", st.Full, full, st)
	}
	return st
}

// gcImage is an image of one repository: its blobs and manifest.
type gcImage struct {
	config, layer, manifest Digest
}

// pushGCImage pushes an image with a config and a layer of its own to repo.
func pushGCImage(t *testing.T, s *Store, repo string) gcImage {
	t.Helper()
	b := pushBlobs(t, s, repo, repo+" config", repo+" layer")
	m := pushImage(t, s, repo, Digest{}, b[0], b[1])
	return gcImage{b[0], b[1], m}
}

func (im gcImage) all() []Digest { return []Digest{im.config, im.layer, im.manifest} }

// settledStore has the images of repos pushed, aged past the grace period
// and gone through a full and an incremental pass: nothing is a candidate.
func settledStore(t *testing.T, repos ...string) (*Store, *testClock, map[string]gcImage) {
	t.Helper()
	s, clock := openClockStore(t)
	images := map[string]gcImage{}
	for _, r := range repos {
		images[r] = pushGCImage(t, s, r)
		ageAll(t, s, images[r].all()...)
	}
	gcPass(t, s, true)
	clock.add(2 * time.Hour)
	gcPass(t, s, false) // the push's marks, now old enough
	if st := gcPass(t, s, false); st.ReposExamined != 0 || st.BlobsExamined != 0 || st.removedAny() {
		t.Fatalf("GC of a settled store = %+v, want nothing examined", st)
	}
	return s, clock, images
}

// countKeys counts the keys under prefix.
// hasBlobMark reports whether blob d has a candidate mark.
func hasBlobMark(t *testing.T, s *Store, d Digest) bool {
	t.Helper()
	found := false
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(pGCBlob)})
		defer it.Close()
		for it.Rewind(); it.Valid() && !found; it.Next() {
			found = strings.HasSuffix(string(it.Item().Key()), d.String())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

func countKeys(t *testing.T, s *Store, prefix string) int {
	t.Helper()
	n := 0
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefix)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestGCIncrementalExaminesOnlyWhatChanged: a deleted manifest makes its
// repository and blob candidates; the pass examines those and collects
// what only that manifest referenced, and reads no other repository.
func TestGCIncrementalExaminesOnlyWhatChanged(t *testing.T) {
	t.Parallel()
	s, _, images := settledStore(t, "a", "b", "c")
	shared := mustPut(t, s, []byte("shared by b and c"))
	mustLink(t, s, "b", shared)
	mustLink(t, s, "c", shared)
	sharedImage := func(repo string) Digest { return pushImage(t, s, repo, Digest{}, images[repo].config, shared) }
	bShared, cShared := sharedImage("b"), sharedImage("c")
	ageAll(t, s, shared, bShared, cShared)

	b := images["b"]
	for _, m := range []Digest{b.manifest, bShared} {
		if err := s.DeleteManifest(t.Context(), "b", m); err != nil {
			t.Fatal(err)
		}
	}
	st := gcPass(t, s, false)
	if st.ReposExamined != 1 {
		t.Errorf("repositories examined = %d, want only b", st.ReposExamined)
	}
	if st.LinksRemoved != 2 || st.BlobsRemoved != 4 {
		t.Errorf("GC = %+v, want b's 2 old links and 4 blobs (its config, layer and both manifests)", st)
	}
	wantLinks(t, s, "b", true, shared) // linked within the grace period
	wantStored(t, s, false, b.all()...)
	wantStored(t, s, false, bShared)
	// c still references the shared layer, and a and c are untouched.
	wantStored(t, s, true, shared, cShared)
	wantLinks(t, s, "c", true, shared, images["c"].config, images["c"].layer)
	for _, r := range []string{"a", "c"} {
		wantStored(t, s, true, images[r].all()...)
	}

	if st := gcPass(t, s, false); st.ReposExamined != 0 || st.BlobsExamined != 0 || st.removedAny() {
		t.Errorf("GC after that = %+v, want nothing examined", st)
	}
	if n := countKeys(t, s, pGCBlob); n != 0 {
		t.Errorf("%d blob candidates left", n)
	}
}

// TestGCIncrementalAbandonedPush: blobs pushed and never referenced, linked
// or not, are candidates that stay while young and go once the grace
// period is over.
func TestGCIncrementalAbandonedPush(t *testing.T) {
	t.Parallel()
	s, clock, _ := settledStore(t, "a")
	loose := mustPut(t, s, []byte("pushed, never linked"))
	linked := pushBlobs(t, s, "a", "linked, never referenced")[0]

	st := gcPass(t, s, false)
	if st.removedAny() || st.ReposExamined != 0 {
		t.Errorf("GC inside the grace period = %+v", st)
	}
	wantStored(t, s, true, loose, linked)
	if n := countKeys(t, s, pGCBlob); n != 1 {
		t.Errorf("blob candidates = %d, want the unlinked blob's", n)
	}

	clock.add(2 * time.Hour)
	ageAll(t, s, loose, linked)
	st = gcPass(t, s, false)
	if st.ReposExamined != 1 || st.LinksRemoved != 1 || st.BlobsRemoved != 2 {
		t.Errorf("GC past the grace period = %+v, want a's link and both blobs", st)
	}
	wantStored(t, s, false, loose, linked)
}

// TestGCIncrementalKeepsYoungLinks: a repository whose unreferenced link
// was renewed stays a candidate until the link is old.
func TestGCIncrementalKeepsYoungLinks(t *testing.T) {
	t.Parallel()
	s, clock, _ := settledStore(t, "a")
	d := pushBlobs(t, s, "a", "manifest comes later")[0]
	ageAll(t, s, d)
	clock.add(50 * time.Minute)
	if _, err := s.HasBlob(t.Context(), "a", d); err != nil { // renews the link
		t.Fatal(err)
	}
	clock.add(20 * time.Minute)
	if st := gcPass(t, s, false); st.ReposExamined != 1 || st.LinksRemoved != 0 {
		t.Errorf("GC while the renewed link is young = %+v", st)
	}
	wantLinks(t, s, "a", true, d)
	clock.add(50 * time.Minute)
	if st := gcPass(t, s, false); st.ReposExamined != 1 || st.LinksRemoved != 1 || st.BlobsRemoved != 1 {
		t.Errorf("GC once the renewed link is old = %+v", st)
	}
}

// TestGCCandidatesSurviveRestart: the candidates of a change are durable
// the moment the change returns (same transaction), so a process that
// dies before the next pass loses none, and the pass after the restart is
// incremental and still collects.
func TestGCCandidatesSurviveRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	clock := newTestClock()
	open := func() *Store {
		s := openStore(t, Options{Dir: dir, GCGrace: time.Hour})
		s.now = clock.now
		return s
	}
	s := open()
	gone := pushGCImage(t, s, "gone")
	kept := pushGCImage(t, s, "kept")
	ageAll(t, s, append(gone.all(), kept.all()...)...)
	gcPass(t, s, true)
	clock.add(2 * time.Hour)
	gcPass(t, s, false)

	if err := s.DeleteManifest(t.Context(), "gone", gone.manifest); err != nil {
		t.Fatal(err)
	}
	if countKeys(t, s, pGCRepo) != 1 || countKeys(t, s, pGCBlob) != 1 {
		t.Fatalf("candidates after the delete: %d repositories, %d blobs; want 1 and 1",
			countKeys(t, s, pGCRepo), countKeys(t, s, pGCBlob))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open()
	st := gcPass(t, s, false)
	if st.ReposExamined != 1 || st.LinksRemoved != 2 || st.BlobsRemoved != 3 {
		t.Errorf("GC after the restart = %+v, want gone's 2 links and 3 blobs", st)
	}
	wantStored(t, s, false, gone.all()...)
	wantStored(t, s, true, kept.all()...)
}

// TestGCInstallMarksBeforeTheFile: every way a blob comes in marks it,
// and the mark is there by the time the blob is.
func TestGCInstallMarksBeforeTheFile(t *testing.T) {
	t.Parallel()
	s, _, _ := settledStore(t, "a")
	d := pushBlobs(t, s, "a", "put")[0]
	up, err := s.NewUpload(t.Context(), "a")
	if err != nil {
		t.Fatal(err)
	}
	body := []byte("uploaded")
	if _, err := s.AppendUpload(t.Context(), "a", up.ID, 0, bytes.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CommitUpload(t.Context(), "a", up.ID, digestOf(body)); err != nil {
		t.Fatal(err)
	}
	m := pushImage(t, s, "a", Digest{}, d, digestOf(body))
	for _, b := range []Digest{d, digestOf(body), m} {
		if !hasBlobMark(t, s, b) {
			t.Errorf("%s: no candidate", b)
		}
	}
	// All linked: the next pass examines and settles them.
	if st := gcPass(t, s, false); st.BlobsExamined != 3 || st.removedAny() {
		t.Errorf("GC = %+v, want 3 blobs examined, nothing removed", st)
	}
	if n := countKeys(t, s, pGCBlob); n != 0 {
		t.Errorf("%d blob candidates left", n)
	}
}

// TestGCFullPassWithoutCandidates: a store from before candidates (no
// marks, no record of a full pass) gets a full pass first, which collects
// what nothing marked; and the full pass comes back every
// GCFullInterval.
func TestGCFullPassWithoutCandidates(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	clock := newTestClock()
	s := openStore(t, Options{Dir: dir, GCGrace: time.Hour, GCFullInterval: 6 * time.Hour})
	s.now = clock.now
	gone := pushGCImage(t, s, "gone")
	kept := pushGCImage(t, s, "kept")
	loose := mustPut(t, s, []byte("never linked"))
	if err := s.DeleteManifest(t.Context(), "gone", gone.manifest); err != nil {
		t.Fatal(err)
	}
	clock.add(2 * time.Hour)
	ageAll(t, s, append(append(gone.all(), kept.all()...), loose)...)
	dropAll := func(prefixes ...string) {
		t.Helper()
		for _, p := range prefixes {
			if err := s.db.DropPrefix([]byte(p)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// As if written before the upgrade: no candidates.
	dropAll(pGCRepo, pGCBlob)
	if err := s.fullPassDone(clock.now()); err != nil {
		t.Fatal(err)
	}
	if st := gcPass(t, s, false); st.removedAny() || st.ReposExamined != 0 {
		t.Fatalf("incremental GC without candidates = %+v", st)
	}
	wantStored(t, s, true, gone.config, loose)

	dropAll(keyGCFull)
	st := gcPass(t, s, true)
	if st.LinksRemoved != 2 || st.BlobsRemoved != 4 {
		t.Errorf("full GC = %+v, want gone's 2 links and 4 blobs", st)
	}
	wantStored(t, s, false, append(gone.all(), loose)...)
	wantStored(t, s, true, kept.all()...)
	gcPass(t, s, false)

	// Past GCFullInterval: full again, also after a restart.
	clock.add(7 * time.Hour)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, Options{Dir: dir, GCGrace: time.Hour, GCFullInterval: 6 * time.Hour})
	s.now = clock.now
	if st := gcPass(t, s, true); st.ReposExamined != 1 {
		t.Errorf("full GC = %+v, want kept examined", st)
	}
	gcPass(t, s, false)
}

// TestGCFullPassMarksYoungGarbage: what the full pass finds unreferenced
// but young is marked, so the incremental passes take it in time.
func TestGCFullPassMarksYoungGarbage(t *testing.T) {
	t.Parallel()
	s, clock := openClockStore(t)
	loose := mustPut(t, s, []byte("young, never linked"))
	link := pushBlobs(t, s, "a", "young link")[0]
	for _, p := range []string{pGCRepo, pGCBlob} {
		if err := s.db.DropPrefix([]byte(p)); err != nil {
			t.Fatal(err)
		}
	}
	if st := gcPass(t, s, true); st.removedAny() {
		t.Fatalf("full GC inside the grace period = %+v", st)
	}
	clock.add(2 * time.Hour)
	ageAll(t, s, loose, link)
	st := gcPass(t, s, false)
	if st.LinksRemoved != 1 || st.BlobsRemoved != 2 {
		t.Errorf("incremental GC = %+v, want the link and both blobs", st)
	}
}

// TestGCIncrementalManyRepositories: marks are read and settled in
// batches; more changed repositories than one batch are all examined.
func TestGCIncrementalManyRepositories(t *testing.T) {
	t.Parallel()
	s, _ := openClockStore(t)
	gcPass(t, s, true)
	n := gcMarkBatch + 10
	var all []Digest
	for i := range n {
		repo := fmt.Sprintf("r%03d", i)
		d := pushBlobs(t, s, repo, repo)[0]
		m := pushImage(t, s, repo, Digest{}, d)
		if err := s.DeleteManifest(t.Context(), repo, m); err != nil {
			t.Fatal(err)
		}
		all = append(all, d, m)
	}
	ageAll(t, s, all...)
	// The links are young: examined, kept, marked again.
	if st := gcPass(t, s, false); st.ReposExamined != n || st.LinksRemoved != 0 || st.BlobsRemoved != n {
		t.Errorf("GC = %+v, want %d repositories examined, the %d manifests collected", st, n, n)
	}
	if got := countKeys(t, s, pGCRepo); got != n {
		t.Errorf("repository candidates = %d, want %d", got, n)
	}
}

// TestGCBlobMarksFrom: a pass reads the blob marks from gtfrom and moves
// it past what it consumed, but never past a mark it kept, however old
// that mark's time: the blob is still collected once its file is old.
func TestGCBlobMarksFrom(t *testing.T) {
	t.Parallel()
	s, _, _ := settledStore(t, "a")
	gone := mustPut(t, s, []byte("collected now"))
	young := mustPut(t, s, []byte("young file, old mark"))
	ageAll(t, s, gone)
	// young's mark as if made three hours ago (the file is new), after
	// where the marks start.
	if err := s.setBlobMarksFrom(time.Now().Add(-4 * time.Hour)); err != nil {
		t.Fatal(err)
	}
	err := s.update(func(txn *badger.Txn) error {
		return txn.Set(gcBlobKey(time.Now().Add(-3*time.Hour), young), nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if st := gcPass(t, s, false); st.BlobsRemoved != 1 {
		t.Fatalf("GC = %+v, want only the old file removed", st)
	}
	from, err := s.blobMarksFrom()
	if err != nil {
		t.Fatal(err)
	}
	if !from.Before(start.Add(-2 * time.Hour)) {
		t.Fatalf("gtfrom = %v, want at or before the kept mark (3 h ago)", from)
	}
	ageAll(t, s, young)
	if st := gcPass(t, s, false); st.BlobsRemoved != 1 {
		t.Fatalf("GC once the file is old = %+v, want it removed", st)
	}
	wantStored(t, s, false, gone, young)
	from, err = s.blobMarksFrom()
	if err != nil {
		t.Fatal(err)
	}
	if want := time.Now().Add(-gcMarkSlack); from.Before(start.Add(-gcMarkSlack)) || from.After(want) {
		t.Errorf("gtfrom = %v after every mark was consumed, want about %v", from, want)
	}
	if n := countKeys(t, s, pGCBlob); n != 0 {
		t.Errorf("%d blob candidates left", n)
	}
}

// TestGCOldBlobMarks: blob marks by digest (gb/, from before marks were
// ordered by time) are left to the full pass, which collects what they
// stood for with its walk and deletes them.
func TestGCOldBlobMarks(t *testing.T) {
	t.Parallel()
	s, clock, _ := settledStore(t, "a")
	loose := mustPut(t, s, []byte("marked the old way"))
	ageAll(t, s, loose)
	err := s.update(func(txn *badger.Txn) error {
		if err := txn.Delete(firstKey(t, txn, pGCBlob)); err != nil {
			return err
		}
		return txn.Set([]byte(pGCBlobV1+loose.String()), nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	if st := gcPass(t, s, false); st.BlobsExamined != 0 || st.removedAny() {
		t.Fatalf("incremental GC = %+v, want old marks left alone", st)
	}
	wantStored(t, s, true, loose)
	clock.add(25 * time.Hour)
	if st := gcPass(t, s, true); st.BlobsRemoved != 1 {
		t.Fatalf("full GC = %+v, want the blob removed", st)
	}
	wantStored(t, s, false, loose)
	if n := countKeys(t, s, pGCBlobV1); n != 0 {
		t.Errorf("%d old blob marks left after the full pass", n)
	}
}

// firstKey is the first key under prefix.
func firstKey(t *testing.T, txn *badger.Txn, prefix string) []byte {
	t.Helper()
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefix)})
	defer it.Close()
	it.Rewind()
	if !it.Valid() {
		t.Fatalf("no key under %s", prefix)
	}
	return it.Item().KeyCopy(nil)
}

// TestGCBlobMarksWithoutFrom: a store that has had a full pass but has no
// gtfrom yet (upgraded) reads its blob marks from the first.
func TestGCBlobMarksWithoutFrom(t *testing.T) {
	t.Parallel()
	s, _, _ := settledStore(t, "a")
	if err := s.db.DropPrefix([]byte(keyGCBlobAt)); err != nil {
		t.Fatal(err)
	}
	loose := mustPut(t, s, []byte("marked, never linked"))
	ageAll(t, s, loose)
	if st := gcPass(t, s, false); st.BlobsRemoved != 1 {
		t.Fatalf("GC = %+v, want the marked blob removed", st)
	}
	wantStored(t, s, false, loose)
}
