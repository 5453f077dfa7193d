package cache

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// testClock is a store clock the test moves by hand; it starts at the
// real time.
type testClock struct{ ns atomic.Int64 }

func newTestClock() *testClock {
	c := &testClock{}
	c.ns.Store(time.Now().UnixNano())
	return c
}

func (c *testClock) now() time.Time      { return time.Unix(0, c.ns.Load()) }
func (c *testClock) add(d time.Duration) { c.ns.Add(int64(d)) }

// openClockStore is a store with a one hour grace period on a clock the
// test moves.
func openClockStore(t *testing.T) (*Store, *testClock) {
	t.Helper()
	s := openStore(t, Options{GCGrace: time.Hour})
	c := newTestClock()
	s.now = c.now
	return s, c
}

// pushBlobs puts each content into the store and links it to repo.
func pushBlobs(t *testing.T, s *Store, repo string, contents ...string) []Digest {
	t.Helper()
	var ds []Digest
	for _, c := range contents {
		d := mustPut(t, s, []byte(c))
		mustLink(t, s, repo, d)
		ds = append(ds, d)
	}
	return ds
}

type desc struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
}

// pushImage links an image manifest of config and layers (and subject,
// if not zero) to repo.
func pushImage(t *testing.T, s *Store, repo string, subject, config Digest, layers ...Digest) Digest {
	t.Helper()
	doc := map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        desc{"application/vnd.oci.image.config.v1+json", config.String(), 1},
	}
	var ls []desc
	for _, l := range layers {
		ls = append(ls, desc{"application/vnd.oci.image.layer.v1.tar", l.String(), 1})
	}
	doc["layers"] = ls
	if !subject.IsZero() {
		doc["subject"] = desc{"application/vnd.oci.image.manifest.v1+json", subject.String(), 1}
	}
	return pushManifestDoc(t, s, repo, "application/vnd.oci.image.manifest.v1+json", subject, doc)
}

// pushIndex links an index of children to repo.
func pushIndex(t *testing.T, s *Store, repo string, children ...Digest) Digest {
	t.Helper()
	var ms []desc
	for _, c := range children {
		ms = append(ms, desc{"application/vnd.oci.image.manifest.v1+json", c.String(), 1})
	}
	doc := map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": ms}
	return pushManifestDoc(t, s, repo, "application/vnd.oci.image.index.v1+json", Digest{}, doc)
}

func pushManifestDoc(t *testing.T, s *Store, repo, mt string, subject Digest, doc map[string]any) Digest {
	t.Helper()
	body, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	m := Manifest{Digest: digestOf(body), MediaType: mt, Subject: subject}
	if err := s.PutManifest(t.Context(), repo, m, body, nil); err != nil {
		t.Fatalf("PutManifest: %v", err)
	}
	return m.Digest
}

// ageAll puts every blob file named in the past, beyond the grace period.
func ageAll(t *testing.T, s *Store, ds ...Digest) {
	t.Helper()
	for _, d := range ds {
		age(t, s.blobPath(d), 2*time.Hour)
	}
}

func mustGC(t *testing.T, s *Store) GCStats {
	t.Helper()
	st, err := s.GC()
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	return st
}

// wantLinks checks which of ds repo links (true) or not (false), both
// keys, without renewing the links as HasBlob would.
func wantLinks(t *testing.T, s *Store, repo string, want bool, ds ...Digest) {
	t.Helper()
	for _, d := range ds {
		var link, rev bool
		err := s.db.View(func(txn *badger.Txn) (err error) {
			if link, err = exists(txn, blobLinkKey(repo, d)); err != nil {
				return err
			}
			rev, err = exists(txn, blobRevKey(d, repo))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if link != rev {
			t.Errorf("%s, %s: link %v, by-digest link %v", repo, d, link, rev)
		}
		if link != want {
			t.Errorf("%s links %s: %v, want %v", repo, d, link, want)
		}
	}
}

// wantStored checks which of ds the store holds (true) or not (false).
func wantStored(t *testing.T, s *Store, want bool, ds ...Digest) {
	t.Helper()
	for _, d := range ds {
		_, err := s.StatBlob(t.Context(), d)
		if want && err != nil {
			t.Errorf("%s freed: %v", d, err)
		}
		if !want && !errors.Is(err, ErrBlobUnknown) {
			t.Errorf("%s still stored (%v)", d, err)
		}
	}
}

func TestGCDropsLinksOfDeletedManifest(t *testing.T) {
	t.Parallel()
	s, clock := openClockStore(t)
	b := pushBlobs(t, s, "app", "config", "only here", "shared in repo", "shared across repos", "config 2", "sig config", "sig layer")
	config, only, inRepo, across, config2, sigConfig, sigLayer := b[0], b[1], b[2], b[3], b[4], b[5], b[6]
	gone := pushImage(t, s, "app", Digest{}, config, only, inRepo, across)
	kept := pushImage(t, s, "app", Digest{}, config2, inRepo)
	// A signature of the image about to go: it stays, and so do its blobs.
	sig := pushImage(t, s, "app", gone, sigConfig, sigLayer)
	otherConfig := pushBlobs(t, s, "other", "other config")[0]
	mustLink(t, s, "other", across)
	other := pushImage(t, s, "other", Digest{}, otherConfig, across)

	if err := s.DeleteManifest(t.Context(), "app", gone); err != nil {
		t.Fatal(err)
	}
	clock.add(2 * time.Hour)
	ageAll(t, s, append(b, gone, kept, sig, otherConfig, other)...)
	st := mustGC(t, s)
	if st.LinksRemoved != 3 || st.BlobsRemoved != 3 {
		t.Errorf("GC = %+v, want 3 links (config, only here, shared across repos) and 3 blobs (with the manifest)", st)
	}
	wantLinks(t, s, "app", false, config, only, across)
	wantStored(t, s, false, config, only, gone)
	wantLinks(t, s, "app", true, inRepo, config2, sigConfig, sigLayer)
	wantLinks(t, s, "other", true, across, otherConfig)
	if repos, err := s.ReposWithBlob(t.Context(), across, 0); err != nil || len(repos) != 1 || repos[0] != "other" {
		t.Errorf("ReposWithBlob(shared across repos) = %q, %v: the by-digest link of app stayed", repos, err)
	}
	for _, m := range []Digest{kept, sig} {
		if _, _, err := s.GetManifest(t.Context(), "app", m); err != nil {
			t.Errorf("manifest %s: %v", m, err)
		}
	}
	if refs, _, err := s.Referrers(t.Context(), "app", gone, "", -1); err != nil || len(refs) != 1 {
		t.Errorf("Referrers of the deleted manifest = %v, %v; the signature is still linked", refs, err)
	}
	if st := mustGC(t, s); st.removedAny() {
		t.Errorf("second GC = %+v", st)
	}
}

func TestGCLinkGrace(t *testing.T) {
	t.Parallel()
	s, clock := openClockStore(t)
	b := pushBlobs(t, s, "app", "pushed, manifest to come", "asked for", "mounted again")
	pending, asked, mounted := b[0], b[1], b[2]
	ageAll(t, s, b...) // old files: only the links' times protect them

	// A push whose manifest has not come yet, well inside the grace period.
	clock.add(50 * time.Minute)
	if st := mustGC(t, s); st.LinksRemoved != 0 || st.BlobsRemoved != 0 {
		t.Fatalf("GC inside the grace period = %+v", st)
	}
	wantLinks(t, s, "app", true, b...)

	// A client asks whether the repository has the blob (and skips the
	// upload), another mounts it again: both renew the link.
	if _, err := s.HasBlob(t.Context(), "app", asked); err != nil {
		t.Fatal(err)
	}
	mustLink(t, s, "app", mounted)
	clock.add(20 * time.Minute) // 70 min after the push, 20 after the renewal
	if st := mustGC(t, s); st.LinksRemoved != 1 || st.BlobsRemoved != 1 {
		t.Errorf("GC = %+v, want the pending blob's link and file", st)
	}
	wantLinks(t, s, "app", false, pending)
	wantStored(t, s, false, pending)
	wantLinks(t, s, "app", true, asked, mounted)

	// Its manifest arrives: referenced links stay however old.
	pushImage(t, s, "app", Digest{}, asked, mounted)
	clock.add(10 * time.Hour)
	if st := mustGC(t, s); st.LinksRemoved != 0 {
		t.Errorf("GC dropped referenced links: %+v", st)
	}
	wantLinks(t, s, "app", true, asked, mounted)
}

func TestGCIndexChildren(t *testing.T) {
	t.Parallel()
	s, clock := openClockStore(t)
	b := pushBlobs(t, s, "multi", "amd64 config", "amd64 layer", "arm64 config", "arm64 layer", "common layer", "stray")
	amdConfig, amdLayer, armConfig, armLayer, common, stray := b[0], b[1], b[2], b[3], b[4], b[5]
	amd := pushImage(t, s, "multi", Digest{}, amdConfig, amdLayer, common)
	arm := pushImage(t, s, "multi", Digest{}, armConfig, armLayer, common)
	index := pushIndex(t, s, "multi", amd, arm)
	clock.add(2 * time.Hour)
	ageAll(t, s, append(b, amd, arm, index)...)

	if st := mustGC(t, s); st.LinksRemoved != 1 {
		t.Errorf("GC = %+v, want the stray link only", st)
	}
	wantLinks(t, s, "multi", false, stray)
	wantLinks(t, s, "multi", true, amdConfig, amdLayer, armConfig, armLayer, common)

	// Without the index the children are untagged manifests, still
	// pullable by digest: their blobs stay.
	if err := s.DeleteManifest(t.Context(), "multi", index); err != nil {
		t.Fatal(err)
	}
	if st := mustGC(t, s); st.LinksRemoved != 0 {
		t.Errorf("GC after deleting the index = %+v", st)
	}
	wantLinks(t, s, "multi", true, amdConfig, amdLayer, armConfig, armLayer, common)

	// One child gone: what only it referenced goes.
	if err := s.DeleteManifest(t.Context(), "multi", amd); err != nil {
		t.Fatal(err)
	}
	if st := mustGC(t, s); st.LinksRemoved != 2 {
		t.Errorf("GC after deleting a child = %+v, want 2 links", st)
	}
	wantLinks(t, s, "multi", false, amdConfig, amdLayer)
	wantStored(t, s, false, amdConfig, amdLayer)
	wantLinks(t, s, "multi", true, armConfig, armLayer, common)
}

// TestGCLinkFromBeforeUpgrade: links written before links had a time
// count from when GC first sees them, never as ancient.
func TestGCLinkFromBeforeUpgrade(t *testing.T) {
	t.Parallel()
	s, clock := openClockStore(t)
	d := mustPut(t, s, []byte("in flight across the upgrade"))
	err := s.update(func(txn *badger.Txn) error {
		return setAll(txn, repoKey("app"), blobLinkKey("app", d), blobRevKey(d, "app"))
	})
	if err != nil {
		t.Fatal(err)
	}
	clock.add(24 * time.Hour)
	ageAll(t, s, d)

	if st := mustGC(t, s); st.LinksRemoved != 0 || st.BlobsRemoved != 0 {
		t.Fatalf("first GC after the upgrade = %+v", st)
	}
	clock.add(50 * time.Minute)
	if st := mustGC(t, s); st.LinksRemoved != 0 {
		t.Fatalf("GC inside the grace period since first seen = %+v", st)
	}
	wantLinks(t, s, "app", true, d)
	clock.add(20 * time.Minute)
	if st := mustGC(t, s); st.LinksRemoved != 1 || st.BlobsRemoved != 1 {
		t.Errorf("GC past the grace period since first seen = %+v", st)
	}
	wantStored(t, s, false, d)
}

// TestGCMirrorLinks: a mirror's blob fetched by digest before any manifest
// references it is kept for the grace period like a push, and once
// dropped it leaves the mirror cache's total.
func TestGCMirrorLinks(t *testing.T) {
	t.Parallel()
	s, clock := openClockStore(t)
	s.manualEvict.Store(true)
	s.SetMirrorCache(MirrorCache{Mirrored: mirrored, MaxBytes: 1 << 20})
	layer := fillBlob(t, s, "m/lib", content(0, 100))
	config := fillBlob(t, s, "m/lib", content(1, 10))
	loose := fillBlob(t, s, "m/lib", content(2, 50))
	man := pushImage(t, s, "m/lib", Digest{}, config, layer)
	if st := mustEvict(t, s); st.Size == 0 {
		t.Fatalf("nothing counted: %+v", st)
	}
	before := s.MirrorCacheSize()

	clock.add(50 * time.Minute)
	ageAll(t, s, layer, config, loose, man)
	if st := mustGC(t, s); st.LinksRemoved != 0 {
		t.Fatalf("GC inside the grace period = %+v", st)
	}
	clock.add(20 * time.Minute)
	if st := mustGC(t, s); st.LinksRemoved != 1 || st.BlobsRemoved != 1 {
		t.Errorf("GC = %+v, want the loose blob", st)
	}
	wantLinks(t, s, "m/lib", false, loose)
	wantLinks(t, s, "m/lib", true, layer, config)
	if st := mustEvict(t, s); st.Size != before-50 || st.ItemsEvicted != 0 {
		t.Errorf("after GC: %+v, want size %d", st, before-50)
	}
}

// TestGCLinksRaceManifests: a client that checks its blobs are in the
// repository and then pushes the manifest never ends with a manifest whose
// blobs GC took, whatever the interleaving.
func TestGCLinksRaceManifests(t *testing.T) {
	t.Parallel()
	s, clock := openClockStore(t)
	var ds []Digest
	for i := range 20 {
		ds = append(ds, pushBlobs(t, s, "app", fmt.Sprintf("blob %d", i))...)
	}
	ageAll(t, s, ds...)
	clock.add(2 * time.Hour)

	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for range 3 {
			if _, err := s.GC(); err != nil {
				t.Error(err)
			}
		}
	}()
	var pushed []Digest
	go func() {
		defer wg.Done()
		for _, d := range ds {
			if _, err := s.HasBlob(t.Context(), "app", d); err != nil {
				continue // GC was first: the client uploads it again
			}
			pushImage(t, s, "app", Digest{}, d)
			pushed = append(pushed, d)
		}
	}()
	wg.Wait()
	clock.add(2 * time.Hour)
	mustGC(t, s)
	wantLinks(t, s, "app", true, pushed...)
	wantStored(t, s, true, pushed...)
}
