package cache

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func TestGC(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openStore(t, Options{Dir: dir, GCGrace: time.Hour})
	old := 2 * time.Hour

	linked := mustPut(t, s, []byte("linked"))
	mustLink(t, s, "app", linked)
	unlinkedOld := mustPut(t, s, []byte("unlinked old"))
	unlinkedYoung := mustPut(t, s, []byte("unlinked young"))
	wasLinked := mustPut(t, s, []byte("was linked"))
	mustLink(t, s, "app", wasLinked)
	if err := s.UnlinkBlob(t.Context(), "app", wasLinked); err != nil {
		t.Fatal(err)
	}
	otherRepo := mustPut(t, s, []byte("linked elsewhere"))
	mustLink(t, s, "a", otherRepo)
	mustLink(t, s, "a/b", otherRepo)
	if err := s.UnlinkBlob(t.Context(), "a", otherRepo); err != nil {
		t.Fatal(err)
	}
	man := putManifest(t, s, "app", "m", Digest{}, "latest")
	deletedMan := putManifest(t, s, "app", "gone", Digest{})
	if err := s.DeleteManifest(t.Context(), "app", deletedMan.Digest); err != nil {
		t.Fatal(err)
	}
	sha512Old := FromBytes(SHA512, []byte("512 unlinked"))
	if _, err := s.PutBlob(t.Context(), sha512Old, -1, bytes.NewReader([]byte("512 unlinked"))); err != nil {
		t.Fatal(err)
	}
	for _, d := range []Digest{linked, unlinkedOld, wasLinked, otherRepo, man.Digest, deletedMan.Digest, sha512Old} {
		age(t, s.blobPath(d), old)
	}
	// A stray file in blobs/ that is not a digest is left alone.
	stray := filepath.Join(dir, "blobs", "sha256", "ab", "README")
	os.WriteFile(stray, []byte("x"), 0o644)
	age(t, stray, old)
	// Temp files: one dead, one of a write in progress.
	deadTmp := filepath.Join(dir, "tmp", "dead")
	liveTmp := filepath.Join(dir, "tmp", "live")
	os.WriteFile(deadTmp, []byte("x"), 0o644)
	os.WriteFile(liveTmp, []byte("x"), 0o644)
	age(t, deadTmp, old)
	// Upload data without a session (crash before it was recorded).
	orphan := filepath.Join(dir, "uploads", "0123456789abcdef0123456789abcdef")
	os.WriteFile(orphan, []byte("x"), 0o644)
	age(t, orphan, old)
	live, _ := s.NewUpload(t.Context(), "app")
	age(t, filepath.Join(dir, "uploads", live.ID), old) // old file, live session

	st, err := s.GC()
	if err != nil {
		t.Fatal(err)
	}
	wantBytes := int64(len("unlinked old") + len("was linked") + len("512 unlinked") + len(manifestBody("gone", Digest{})))
	if st.BlobsRemoved != 4 || st.BytesRemoved != wantBytes || st.UploadsExpired != 0 {
		t.Errorf("GC = %+v, want 4 blobs, %d bytes", st, wantBytes)
	}
	for _, d := range []Digest{unlinkedOld, wasLinked, deletedMan.Digest, sha512Old} {
		if _, err := s.StatBlob(t.Context(), d); !errors.Is(err, ErrBlobUnknown) {
			t.Errorf("%s survived: %v", d, err)
		}
	}
	for _, d := range []Digest{linked, unlinkedYoung, otherRepo, man.Digest} {
		if _, err := s.StatBlob(t.Context(), d); err != nil {
			t.Errorf("%s collected: %v", d, err)
		}
	}
	if _, _, err := s.GetManifest(t.Context(), "app", man.Digest); err != nil {
		t.Errorf("manifest broken by GC: %v", err)
	}
	for path, want := range map[string]bool{stray: true, deadTmp: false, liveTmp: true, orphan: false, filepath.Join(dir, "uploads", live.ID): true} {
		if _, err := os.Stat(path); (err == nil) != want {
			t.Errorf("%s: exists=%v, want %v", path, err == nil, want)
		}
	}

	// A second run finds nothing.
	if st, err := s.GC(); err != nil || st.removedAny() {
		t.Errorf("second GC = %+v, %v", st, err)
	}
}

func TestGCPushedAgainRestartsGrace(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{GCGrace: time.Hour})
	content := []byte("pushed again")
	d := mustPut(t, s, content)
	age(t, s.blobPath(d), 2*time.Hour)
	// An in-flight push writes the same blob before its manifest links it.
	mustPut(t, s, content)
	if st, err := s.GC(); err != nil || st.BlobsRemoved != 0 {
		t.Fatalf("GC = %+v, %v", st, err)
	}
}

// TestGCConcurrentWithPushes exercises the link/remove ordering under the
// race detector: pushes of old, unlinked blobs racing GC must end linked
// and present.
func TestGCConcurrentWithPushes(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{GCGrace: time.Hour})
	var ds []Digest
	for i := range 20 {
		d := mustPut(t, s, []byte{byte(i)})
		age(t, s.blobPath(d), 2*time.Hour)
		ds = append(ds, d)
	}
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
	linked := make([]bool, len(ds))
	go func() {
		defer wg.Done()
		for i, d := range ds {
			// Either the blob is still there and the link wins, or GC got
			// it first and LinkBlob says so.
			err := s.LinkBlob(t.Context(), "app", d)
			if err != nil && !errors.Is(err, ErrBlobUnknown) {
				t.Error(err)
			}
			linked[i] = err == nil
		}
	}()
	wg.Wait()
	if _, err := s.GC(); err != nil {
		t.Fatal(err)
	}
	for i, d := range ds {
		if linked[i] {
			if _, err := s.HasBlob(t.Context(), "app", d); err != nil {
				t.Errorf("linked blob %d lost: %v", i, err)
			}
		}
	}
}

// TestGCPaused: while paused, a round of the background collection removes
// nothing; once resumed, the next round does.
func TestGCPaused(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{Dir: t.TempDir(), GCGrace: time.Hour})
	orphan := mustPut(t, s, []byte("unlinked"))
	age(t, s.blobPath(orphan), 2*time.Hour)

	s.PauseGC(true)
	if !s.GCPaused() {
		t.Fatal("GCPaused false after PauseGC(true)")
	}
	if s.gcRound() {
		t.Error("a round ran while paused")
	}
	if _, err := s.StatBlob(t.Context(), orphan); err != nil {
		t.Fatalf("paused gc removed a blob: %v", err)
	}
	s.PauseGC(false)
	if !s.gcRound() {
		t.Error("no round after resume")
	}
	if _, err := s.StatBlob(t.Context(), orphan); !errors.Is(err, ErrBlobUnknown) {
		t.Fatalf("blob after resumed gc: %v, want removed", err)
	}
}

// TestGCConcurrentRePushKeepsBlob: blobs collected in batches under gcMu
// (collectBatch) while clients push the same bytes again through uploads.
// A push that completes must end linked with its file in place, whichever
// of it and the collection went first: the collection either removed the
// old file before the push installed its own, or found the push's touch
// (young) or link and left it.
func TestGCConcurrentRePushKeepsBlob(t *testing.T) {
	t.Parallel()
	const n = 2 * gcMarkBatch
	for round := range 2 {
		s := openStore(t, Options{GCGrace: time.Hour})
		contents := make([][]byte, n)
		ds := make([]Digest, n)
		for i := range n {
			contents[i] = []byte(fmt.Sprintf("blob %d of round %d", i, round))
			ds[i] = mustPut(t, s, contents[i])
			age(t, s.blobPath(ds[i]), 2*time.Hour)
		}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 2 { // the first is full, the second takes the marks
				if _, err := s.GC(); err != nil {
					t.Error(err)
				}
			}
		}()
		pushed := make([]bool, n)
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < n; i += 4 {
					u, err := s.NewUpload(t.Context(), "app")
					if err == nil {
						_, err = s.AppendUpload(t.Context(), "app", u.ID, 0, bytes.NewReader(contents[i]))
					}
					if err == nil {
						_, err = s.CommitUpload(t.Context(), "app", u.ID, ds[i])
					}
					if err != nil {
						t.Error(err)
						return
					}
					pushed[i] = true
				}
			}()
		}
		wg.Wait()
		if _, err := s.GC(); err != nil {
			t.Fatal(err)
		}
		lost := 0
		for i, d := range ds {
			if !pushed[i] {
				continue
			}
			got, err := os.ReadFile(s.blobPath(d))
			if _, herr := s.HasBlob(t.Context(), "app", d); err != nil || herr != nil || !bytes.Equal(got, contents[i]) {
				lost++
				if lost <= 3 {
					t.Errorf("round %d: blob %d pushed again and linked, then: file %v, link %v", round, i, err, herr)
				}
			}
		}
		if lost > 0 {
			t.Fatalf("round %d: %d of %d blobs pushed again were lost", round, lost, n)
		}
	}
}
