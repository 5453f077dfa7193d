package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// mirrored: repositories under m/ are a mirror's.
func mirrored(repo string) bool { return strings.HasPrefix(repo, "m/") }

// stepClock is a store clock that moves a minute per call, ahead of the
// real one, so every recorded use is later than the one before and than
// any file time.
type stepClock struct{ ns atomic.Int64 }

func (c *stepClock) now() time.Time { return time.Unix(0, c.ns.Add(int64(time.Minute))) }

func openMirrorStore(t *testing.T, dir string, limit int64) *Store {
	t.Helper()
	s := openStore(t, Options{Dir: dir})
	c := &stepClock{}
	c.ns.Store(time.Now().Add(time.Hour).UnixNano())
	s.now = c.now
	s.manualEvict.Store(true) // passes run when the test says, not on commits
	s.SetMirrorCache(MirrorCache{Mirrored: mirrored, MaxBytes: limit})
	return s
}

// fillBlob puts b into the store through a fill linked to repo.
func fillBlob(t *testing.T, s *Store, repo string, b []byte) Digest {
	t.Helper()
	d := digestOf(b)
	f, _, err := s.Fill(t.Context(), repo, d, func(context.Context) (io.ReadCloser, int64, error) {
		return io.NopCloser(bytes.NewReader(b)), int64(len(b)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	return d
}

func content(i, n int) []byte { return bytes.Repeat([]byte{byte('a' + i)}, n) }

func mustEvict(t *testing.T, s *Store) EvictStats {
	t.Helper()
	st, err := s.EvictMirrored()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func wantPresent(t *testing.T, s *Store, repo string, d Digest, present bool) {
	t.Helper()
	_, err := s.HasBlob(t.Context(), repo, d)
	if present && err != nil {
		t.Errorf("%s in %s: %v, want it kept", d, repo, err)
	}
	if !present {
		if !errors.Is(err, ErrBlobUnknown) {
			t.Errorf("%s in %s: %v, want it evicted", d, repo, err)
		}
		if _, err := s.StatBlob(t.Context(), d); !errors.Is(err, ErrBlobUnknown) {
			t.Errorf("%s: file still there (%v)", d, err)
		}
	}
}

func TestMirrorCacheLRU(t *testing.T) {
	s := openMirrorStore(t, t.TempDir(), 250)
	a := fillBlob(t, s, "m/a", content(0, 100))
	b := fillBlob(t, s, "m/a", content(1, 100))
	if got := s.MirrorCacheSize(); got != 200 {
		t.Fatalf("size after two fills = %d, want 200", got)
	}
	s.Touch(a) // a read: now b is the least recently used
	c := fillBlob(t, s, "m/b", content(2, 100))

	st := mustEvict(t, s)
	if st.ItemsEvicted != 1 || st.BytesEvicted != 100 || st.Size != 200 {
		t.Fatalf("stats %+v, want one 100-byte blob evicted and 200 left", st)
	}
	wantPresent(t, s, "m/a", a, true)
	wantPresent(t, s, "m/a", b, false)
	wantPresent(t, s, "m/b", c, true)

	// Evicted content comes back like any miss.
	if got := fillBlob(t, s, "m/a", content(1, 100)); got != b {
		t.Fatal("refill digest differs")
	}
	wantPresent(t, s, "m/a", b, true)
	if got := s.MirrorCacheSize(); got != 300 {
		t.Fatalf("size after refill = %d, want 300", got)
	}
}

func TestMirrorCacheUnlimitedCountsOnly(t *testing.T) {
	s := openMirrorStore(t, t.TempDir(), 0)
	fillBlob(t, s, "m/a", content(0, 100))
	fillBlob(t, s, "m/a", content(1, 100))
	if st := mustEvict(t, s); st.ItemsEvicted != 0 || st.Size != 200 {
		t.Fatalf("stats %+v, want nothing evicted and 200 counted", st)
	}
}

func TestMirrorCacheNeverEvictsPushed(t *testing.T) {
	s := openMirrorStore(t, t.TempDir(), 150)
	shared := fillBlob(t, s, "m/a", content(0, 100))
	mustLink(t, s, "team/app", shared) // pushed too: a local repository holds it
	pushed := mustPut(t, s, content(1, 100))
	mustLink(t, s, "team/app", pushed)
	other := fillBlob(t, s, "m/a", content(2, 100))
	newest := fillBlob(t, s, "m/a", content(3, 100))

	st := mustEvict(t, s)
	// Only other and newest are mirrored content; other is the older.
	if st.ItemsEvicted != 1 || st.Size != 100 {
		t.Fatalf("stats %+v, want one evicted and 100 left", st)
	}
	wantPresent(t, s, "m/a", shared, true)
	wantPresent(t, s, "team/app", shared, true)
	wantPresent(t, s, "team/app", pushed, true)
	wantPresent(t, s, "m/a", other, false)
	wantPresent(t, s, "m/a", newest, true)

	// Even a limit nothing fits under leaves pushed content alone.
	s.SetMirrorCache(MirrorCache{Mirrored: mirrored, MaxBytes: 1})
	mustEvict(t, s)
	wantPresent(t, s, "m/a", shared, true)
	wantPresent(t, s, "m/a", newest, false)
}

func TestMirrorCacheHeldNotEvicted(t *testing.T) {
	s := openMirrorStore(t, t.TempDir(), 1)
	held := fillBlob(t, s, "m/a", content(0, 100))
	release := s.Hold(held)

	// A reader of a fill keeps its blob from the moment it opens, through
	// the commit, until it closes.
	g := &gatedSource{content: content(1, 100), size: 100, step: make(chan int)}
	read := digestOf(g.content)
	f, _, err := s.Fill(t.Context(), "m/a", read, g.open)
	if err != nil {
		t.Fatal(err)
	}
	rd, err := f.Reader(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	g.step <- 10
	readN(t, rd, 10)
	// Mid-fill: not in the store yet, and the pass must not trip on it.
	mustEvict(t, s)
	close(g.step)
	if err := f.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}

	if st := mustEvict(t, s); st.ItemsEvicted != 0 || st.Size != 200 {
		t.Fatalf("stats %+v, want nothing evicted while held and read", st)
	}
	wantPresent(t, s, "m/a", held, true)
	wantPresent(t, s, "m/a", read, true)
	if rest, err := io.ReadAll(rd); err != nil || len(rest) != 90 {
		t.Fatalf("reader after the passes: %d bytes, %v", len(rest), err)
	}

	rd.Close()
	rd.Close() // a second Close must not release someone else's hold
	if st := mustEvict(t, s); st.ItemsEvicted != 1 {
		t.Fatalf("stats %+v, want the read blob evicted once closed", st)
	}
	wantPresent(t, s, "m/a", read, false)
	wantPresent(t, s, "m/a", held, true)
	release()
	mustEvict(t, s)
	wantPresent(t, s, "m/a", held, false)
}

func TestMirrorCacheManifests(t *testing.T) {
	s := openMirrorStore(t, t.TempDir(), 1)
	subject := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`)
	sd := digestOf(subject)
	if err := s.PutManifest(t.Context(), "m/app", Manifest{Digest: sd, MediaType: "application/vnd.oci.image.manifest.v1+json"}, subject, []string{"v1", "latest"}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetTagFetched(t.Context(), "m/app", "v1", time.Now()); err != nil {
		t.Fatal(err)
	}
	ref := []byte(`{"schemaVersion":2,"subject":{"digest":"` + sd.String() + `"}}`)
	rd := digestOf(ref)
	if err := s.PutManifest(t.Context(), "m/app", Manifest{Digest: rd, MediaType: "application/vnd.oci.image.manifest.v1+json", Subject: sd}, ref, nil); err != nil {
		t.Fatal(err)
	}
	// The same manifest pushed to a local repository is pushed content.
	local := []byte(`{"schemaVersion":2,"local":true}`)
	ld := digestOf(local)
	for _, repo := range []string{"team/app", "m/app"} {
		if err := s.PutManifest(t.Context(), repo, Manifest{Digest: ld, MediaType: "application/vnd.oci.image.manifest.v1+json"}, local, []string{"local"}); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := s.MirrorCacheSize(), int64(len(subject)+len(ref)); got != want {
		t.Fatalf("size = %d, want %d", got, want)
	}

	if st := mustEvict(t, s); st.ItemsEvicted != 2 {
		t.Fatalf("stats %+v, want both mirrored manifests evicted", st)
	}
	for _, tag := range []string{"v1", "latest"} {
		if _, err := s.TagInfo(t.Context(), "m/app", tag); !errors.Is(err, ErrTagUnknown) {
			t.Errorf("tag %s after eviction: %v, want unknown (a miss that refetches)", tag, err)
		}
	}
	for _, d := range []Digest{sd, rd} {
		if _, _, err := s.GetManifest(t.Context(), "m/app", d); !errors.Is(err, ErrManifestUnknown) {
			t.Errorf("manifest %s after eviction: %v", d, err)
		}
	}
	if refs, _, err := s.Referrers(t.Context(), "m/app", sd, "", -1); err != nil || len(refs) != 0 {
		t.Errorf("referrers after eviction: %v %v", refs, err)
	}
	for _, repo := range []string{"m/app", "team/app"} {
		if _, _, err := s.GetManifest(t.Context(), repo, ld); err != nil {
			t.Errorf("pushed manifest in %s: %v", repo, err)
		}
	}
	if d, err := s.ResolveTag(t.Context(), "m/app", "local"); err != nil || d != ld {
		t.Errorf("tag of the pushed manifest: %v %v", d, err)
	}
	// Fetched again: whole and tagged as before.
	if err := s.PutManifest(t.Context(), "m/app", Manifest{Digest: sd, MediaType: "application/vnd.oci.image.manifest.v1+json"}, subject, []string{"v1"}); err != nil {
		t.Fatal(err)
	}
	if d, err := s.ResolveTag(t.Context(), "m/app", "v1"); err != nil || d != sd {
		t.Fatalf("refetched tag: %v %v", d, err)
	}
}

func TestMirrorCacheRestart(t *testing.T) {
	dir := t.TempDir()
	s := openMirrorStore(t, dir, 0)
	var ds []Digest
	for i := range 4 {
		ds = append(ds, fillBlob(t, s, "m/a", content(i, 100+i)))
	}
	s.Touch(ds[0]) // the oldest fill is the latest use
	pushed := mustPut(t, s, content(9, 1000))
	mustLink(t, s, "team/app", pushed)
	want := s.MirrorCacheSize()
	if want != 100+101+102+103 {
		t.Fatalf("size = %d", want)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2 := openStore(t, Options{Dir: dir})
	if got := s2.MirrorCacheSize(); got != 0 {
		t.Fatalf("size before any limit is set = %d", got)
	}
	s2.manualEvict.Store(true)
	s2.SetMirrorCache(MirrorCache{Mirrored: mirrored, MaxBytes: 250})
	st := mustEvict(t, s2)
	// Counted afresh: 406 bytes, over 250, down to at most 225 with the
	// use recorded before the restart honoured.
	if st.ItemsEvicted != 2 || st.Size != 100+103 {
		t.Fatalf("stats %+v, want ds[1] and ds[2] evicted", st)
	}
	wantPresent(t, s2, "m/a", ds[0], true)
	wantPresent(t, s2, "m/a", ds[1], false)
	wantPresent(t, s2, "m/a", ds[2], false)
	wantPresent(t, s2, "m/a", ds[3], true)
}

// A link whose file is missing (the store was damaged; eviction itself
// unlinks before it removes) is not counted and does not stop a pass.
func TestMirrorCacheLinkWithoutFile(t *testing.T) {
	s := openMirrorStore(t, t.TempDir(), 150)
	lost := fillBlob(t, s, "m/a", content(0, 100))
	if err := os.Remove(s.blobPath(lost)); err != nil {
		t.Fatal(err)
	}
	kept := fillBlob(t, s, "m/a", content(1, 100))
	if st := mustEvict(t, s); st.ItemsEvicted != 0 || st.Size != 100 {
		t.Fatalf("stats %+v", st)
	}
	wantPresent(t, s, "m/a", kept, true)
}

// recordingCacheObserver collects what the store reports.
type recordingCacheObserver struct {
	size    atomic.Int64
	evicted chan int64
}

func (o *recordingCacheObserver) MirrorCacheSize(n int64) { o.size.Store(n) }
func (o *recordingCacheObserver) MirrorEvicted(items int, n int64) {
	o.evicted <- n
}

func TestMirrorCacheEvictsAfterCommit(t *testing.T) {
	s := openStore(t, Options{Dir: t.TempDir()})
	obs := &recordingCacheObserver{evicted: make(chan int64, 8)}
	s.SetMirrorCache(MirrorCache{Mirrored: mirrored, MaxBytes: 250, Observer: obs})
	for i := range 3 {
		fillBlob(t, s, "m/a", content(i, 100))
	}
	// The third commit passes the limit; the background pass follows.
	select {
	case n := <-obs.evicted:
		if n != 100 {
			t.Fatalf("evicted %d bytes, want 100", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no eviction after the commit that passed the limit")
	}
	if got := obs.size.Load(); got != 200 {
		t.Fatalf("observed size %d, want 200", got)
	}
	if got := s.MirrorCacheSize(); got != 200 {
		t.Fatalf("size %d, want 200", got)
	}
}

func TestMirrorCacheOff(t *testing.T) {
	s := openStore(t, Options{Dir: t.TempDir()})
	fillBlob(t, s, "m/a", content(0, 100))
	if st := mustEvict(t, s); st != (EvictStats{}) {
		t.Fatalf("without a configuration: %+v", st)
	}
	if s.MirrorCacheSize() != 0 {
		t.Fatal("counted without a configuration")
	}
}

// BenchmarkHold is what a size limit adds to every mirrored GET: one hold
// and its release, from many goroutines on few digests (a hot image).
func BenchmarkHold(b *testing.B) {
	s := openStore(b, Options{Dir: b.TempDir()})
	ds := make([]Digest, 8)
	for i := range ds {
		ds[i] = digestOf(content(i, 1))
	}
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			release := s.Hold(ds[i%len(ds)])
			release()
			i++
		}
	})
}

// TestEvictWidelyLinkedBlob: a layer may be linked by thousands of
// mirrored repositories, more links than one badger transaction can
// remove. Eviction still takes it (the pass failed on it, and on every
// candidate after it, for ever); a blob a local repository links as well
// is kept with all its links.
func TestEvictWidelyLinkedBlob(t *testing.T) {
	s := openMirrorStore(t, t.TempDir(), 350) // b, linked locally, does not count
	const n = 4000
	a := fillBlob(t, s, "m/r0", content(0, 200))
	b := fillBlob(t, s, "m/s0", content(1, 200))
	for i := 1; i < n; i++ {
		for _, l := range []struct {
			repo string
			d    Digest
		}{{fmt.Sprintf("m/r%d", i), a}, {fmt.Sprintf("m/s%d", i), b}} {
			if err := s.LinkBlob(t.Context(), l.repo, l.d); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.LinkBlob(t.Context(), "local", b); err != nil {
		t.Fatal(err)
	}
	fillBlob(t, s, "m/other", content(2, 200))
	if st := mustEvict(t, s); st.ItemsEvicted != 1 {
		t.Errorf("evicted %+v, want a only", st)
	}
	wantPresent(t, s, "m/r0", a, false)
	wantPresent(t, s, fmt.Sprintf("m/r%d", n-1), a, false)
	wantPresent(t, s, "local", b, true)
	wantPresent(t, s, fmt.Sprintf("m/s%d", n-1), b, true)
}
