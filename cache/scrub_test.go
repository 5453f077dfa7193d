package cache

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// flipByte changes one byte of file in place: the length stays, so only
// hashing tells.
func flipByte(t *testing.T, file string, at int64) {
	t.Helper()
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, at); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
}

type scrubCounts struct {
	bytes   atomic.Int64
	damaged atomic.Int64
	passes  atomic.Int64
}

func (c *scrubCounts) Scrubbed(n int64)        { c.bytes.Add(n) }
func (c *scrubCounts) ScrubFoundDamaged()      { c.damaged.Add(1) }
func (c *scrubCounts) ScrubPassDone(time.Time) { c.passes.Add(1) }

// TestScrubQuarantinesDamagedBlob: a blob file whose bytes changed at the
// same length was served as the blob for ever (every check before reads
// lengths only). A scrub pass finds it, moves it to quarantine/ (so the
// blob is lost, which the store heals: a push stores it again), and
// leaves the intact blobs where they are.
func TestScrubQuarantinesDamagedBlob(t *testing.T) {
	t.Parallel()
	obs := &scrubCounts{}
	s := openStore(t, Options{ScrubObserver: obs})
	damaged := bytes.Repeat([]byte("layer "), 50000)
	d := mustPut(t, s, damaged)
	mustLink(t, s, "app", d)
	var intact []Digest
	for i := range 5 {
		b := bytes.Repeat([]byte{byte(i)}, 1000+i)
		intact = append(intact, mustPut(t, s, b))
	}
	flipByte(t, s.blobPath(d), 123456)
	if _, err := s.StatBlob(t.Context(), d); err != nil {
		t.Fatalf("StatBlob of a blob damaged at its length: %v (the scrub is what finds it)", err)
	}

	rep, err := s.Scrub(t.Context(), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Damaged) != 1 || rep.Damaged[0] != d || rep.Blobs != 6 {
		t.Fatalf("Scrub = %+v, want 6 blobs read, %s damaged", rep, d)
	}
	if want := int64(len(damaged)) + 5*1000 + 10; rep.Bytes != want || obs.bytes.Load() != want {
		t.Errorf("bytes hashed: report %d, observer %d, want %d", rep.Bytes, obs.bytes.Load(), want)
	}
	if obs.damaged.Load() != 1 || obs.passes.Load() != 1 {
		t.Errorf("observer: %d damaged, %d passes", obs.damaged.Load(), obs.passes.Load())
	}
	if _, err := s.StatBlob(t.Context(), d); !errors.Is(err, ErrBlobUnknown) {
		t.Fatalf("StatBlob after the scrub: %v, want ErrBlobUnknown (lost, so it heals)", err)
	}
	q := dirEntries(t, filepath.Join(s.dir, "quarantine"))
	if len(q) != 1 {
		t.Fatalf("quarantine/ holds %v", q)
	}
	kept, err := os.ReadFile(filepath.Join(s.dir, "quarantine", q[0]))
	if err != nil || len(kept) != len(damaged) || bytes.Equal(kept, damaged) {
		t.Fatalf("quarantined file: %d bytes, %v (want the damaged bytes)", len(kept), err)
	}
	for _, i := range intact {
		if _, err := s.StatBlob(t.Context(), i); err != nil {
			t.Errorf("intact blob %s after the scrub: %v", i, err)
		}
	}
	// A push heals it; the next pass finds nothing.
	mustPut(t, s, damaged)
	if info, err := s.HasBlob(t.Context(), "app", d); err != nil || info.Size != int64(len(damaged)) {
		t.Fatalf("HasBlob after the push again: %+v, %v", info, err)
	}
	if rep, err := s.Scrub(t.Context(), 1<<30); err != nil || len(rep.Damaged) != 0 || rep.Blobs != 6 {
		t.Fatalf("second Scrub = %+v, %v", rep, err)
	}
	if _, ok := s.lastScrub(); !ok {
		t.Error("no complete pass recorded")
	}
}

// TestScrubLeavesReplacedFile: the file the scrub found damaged was
// replaced by a push meanwhile (another file at the path): it stays.
func TestScrubLeavesReplacedFile(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{})
	data := bytes.Repeat([]byte("x"), 4096)
	d := mustPut(t, s, data)
	old, err := os.Open(s.blobPath(d))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	// The good bytes installed over it, as a push after a cut does.
	tmp := filepath.Join(s.tmpDir, "replacement")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, s.blobPath(d)); err != nil {
		t.Fatal(err)
	}
	moved, err := s.quarantine(d, old)
	if err != nil || moved != "" {
		t.Fatalf("quarantine of a replaced file: %q, %v", moved, err)
	}
	if _, err := s.StatBlob(t.Context(), d); err != nil {
		t.Fatalf("the replacement after quarantine: %v", err)
	}
}

// TestScrubPaced: a pass keeps to its rate.
func TestScrubPaced(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{})
	for i := range 3 {
		mustPut(t, s, bytes.Repeat([]byte{byte(i)}, 1<<20))
	}
	start := time.Now()
	rep, err := s.Scrub(t.Context(), 2<<20)
	if err != nil {
		t.Fatal(err)
	}
	// 3 MiB at 2 MiB/s: 1.5 s, less the first buffer's worth.
	if took := time.Since(start); took < time.Second {
		t.Errorf("3 MiB scrubbed in %s at 2 MiB/s", took)
	}
	if rep.Bytes != 3<<20 {
		t.Errorf("bytes %d", rep.Bytes)
	}
}

// TestScrubLoopAfterInterval: the background pass runs on its own, and
// Close stops one in progress.
func TestScrubLoopAfterInterval(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openStore(t, Options{Dir: dir})
	d := mustPut(t, s, bytes.Repeat([]byte("y"), 10000))
	// A pass recorded long ago: the loop's next one is due at once.
	if err := s.update(func(txn *badger.Txn) error {
		return txn.Set([]byte(keyScrubDone), []byte{0, 0, 0, 0, 0, 0, 0, 1})
	}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	flipByte(t, filepath.Join(dir, "blobs", "sha256", d.Hex[:2], d.Hex), 10)
	obs := &scrubCounts{}
	s2 := openStore(t, Options{Dir: dir, ScrubInterval: time.Hour, ScrubObserver: obs})
	deadline := time.Now().Add(10 * time.Second)
	for obs.passes.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no scrub pass within 10 s of a pass due")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if obs.damaged.Load() != 1 {
		t.Fatalf("damaged %d", obs.damaged.Load())
	}
	if _, err := s2.StatBlob(t.Context(), d); !errors.Is(err, ErrBlobUnknown) {
		t.Fatalf("StatBlob: %v", err)
	}
}

// TestScrubKeepsBytesPushedDuringRead: a push of a blob whose file the
// scrub was reading (a layer pushed into another repository) found a
// file of the right length and kept it, dropping the verified bytes in
// hand; the scrub then moved that file, damaged, to quarantine, so a blob
// the push had just acknowledged answered 404. While the scrub reads a
// blob, a write of it now installs its bytes over the file, which the
// scrub then leaves (it is not the file it read): the push heals it.
func TestScrubKeepsBytesPushedDuringRead(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{})
	good := bytes.Repeat([]byte("base layer "), 200<<10) // 2.2 MB: 2 s at 1 MiB/s
	d := mustPut(t, s, good)
	mustLink(t, s, "one", d)
	flipByte(t, s.blobPath(d), 1000)

	done := make(chan ScrubReport)
	go func() {
		rep, err := s.Scrub(t.Context(), 1<<20)
		if err != nil {
			t.Error(err)
		}
		done <- rep
	}()
	time.Sleep(500 * time.Millisecond) // the scrub is reading d
	mustPut(t, s, good)
	mustLink(t, s, "two", d)
	rep := <-done
	t.Logf("scrub: %+v", rep)
	info, err := s.HasBlob(t.Context(), "two", d)
	if err != nil {
		t.Fatalf("the blob just pushed, after the scrub: %v", err)
	}
	f, err := s.openBlobFile(d)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := make([]byte, info.Size)
	if _, err := io.ReadFull(f, got); err != nil || !bytes.Equal(got, good) {
		t.Fatalf("the blob's bytes after the push: %v, equal %v", err, bytes.Equal(got, good))
	}
}

// TestScrubResumesAfterRestart: a background pass stopped by Close
// started over from the first blob at the next start, so one longer than
// the process's uptime never reached the blobs late in its order. It now
// resumes after the last blob it checked.
func TestScrubResumesAfterRestart(t *testing.T) {
	defer func(d time.Duration) { scrubSaveEvery = d }(scrubSaveEvery)
	scrubSaveEvery = 0
	dir := t.TempDir()
	s := openStore(t, Options{Dir: dir})
	const blobs, size = 4, 1 << 20
	for i := range blobs {
		mustPut(t, s, bytes.Repeat([]byte{byte(i)}, size))
	}
	// A pass recorded long ago: the loop's next one is due at once.
	if err := s.update(func(txn *badger.Txn) error {
		return txn.Set([]byte(keyScrubDone), []byte{0, 0, 0, 0, 0, 0, 0, 1})
	}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// 1 MiB/s: a blob a second.
	first := &scrubCounts{}
	s = openStore(t, Options{Dir: dir, ScrubInterval: time.Hour, ScrubRate: 1 << 20, ScrubObserver: first})
	for deadline := time.Now().Add(20 * time.Second); first.bytes.Load() < 2*size; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the pass read %d bytes in 20 s", first.bytes.Load())
		}
	}
	s.Close() // a restart, mid-pass
	if first.passes.Load() != 0 {
		t.Fatal("the pass ended before the restart")
	}
	second := &scrubCounts{}
	s = openStore(t, Options{Dir: dir, ScrubInterval: time.Hour, ScrubRate: 1 << 30, ScrubObserver: second})
	for deadline := time.Now().Add(20 * time.Second); second.passes.Load() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no pass completed after the restart")
		}
	}
	total, again := first.bytes.Load()+second.bytes.Load(), second.bytes.Load()
	if again > blobs*size-2*size {
		t.Fatalf("after the restart the pass read %d bytes again (%d in all for %d stored): it started over", again, total, blobs*size)
	}
	if total < blobs*size {
		t.Fatalf("the two parts read %d bytes of %d stored: blobs skipped", total, blobs*size)
	}
	if at := s.scrubAt(); at != (Digest{}) {
		t.Errorf("a complete pass left its resume point: %v", at)
	}
}

// TestScrubWalkAfter: the walk from a resume point lists exactly the
// blobs after it, across prefix folders.
func TestScrubWalkAfter(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{})
	for i := range 40 {
		mustPut(t, s, []byte{byte(i)})
	}
	list := func(after Digest) []Digest {
		var ds []Digest
		if err := s.eachBlobFile(after, func(d Digest) error { ds = append(ds, d); return nil }); err != nil {
			t.Fatal(err)
		}
		return ds
	}
	all := list(Digest{})
	if len(all) != 40 {
		t.Fatalf("walk lists %d of 40 blobs", len(all))
	}
	for i, d := range all {
		if got := list(d); !slices.Equal(got, all[i+1:]) {
			t.Fatalf("after %s (%d): %d blobs, want %d", d, i, len(got), len(all)-i-1)
		}
	}
}

// BenchmarkScrub: a pass at an unbounded rate over 64 blobs of 4 MiB
// (page cache warm), against the limit measured in the same run: reading
// and hashing the same files with nothing else (no listing, no records,
// no pace). scrub_rate then sets how much of that a pass takes.
func BenchmarkScrub(b *testing.B) {
	s := openStore(b, Options{})
	var files []string
	for i := range 64 {
		d := mustPut(b, s, bytes.Repeat([]byte{byte(i), byte(i >> 8), 7}, 4<<20/3))
		files = append(files, s.blobPath(d))
	}
	var total int64
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			b.Fatal(err)
		}
		total += fi.Size()
	}
	b.SetBytes(total)
	buf := make([]byte, 1<<20)
	var limit, pass time.Duration
	for b.Loop() {
		start := time.Now()
		for _, f := range files {
			h := SHA256.New()
			r, err := os.Open(f)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.CopyBuffer(h, r, buf); err != nil {
				b.Fatal(err)
			}
			r.Close()
		}
		limit += time.Since(start)
		start = time.Now()
		rep, err := s.Scrub(b.Context(), 1<<40)
		if err != nil || len(rep.Damaged) != 0 || rep.Bytes != total {
			b.Fatalf("Scrub = %+v, %v", rep, err)
		}
		pass += time.Since(start)
	}
	b.ReportMetric(float64(total)*float64(b.N)/pass.Seconds()/1e6, "scrub-MB/s")
	b.ReportMetric(float64(limit)/float64(pass), "ratio_to_limit")
}
