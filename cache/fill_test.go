package cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// gatedSource hands out content in steps the test controls.
type gatedSource struct {
	content []byte
	size    int64 // declared
	step    chan int
	fail    error // returned after the steps end, instead of EOF
	calls   int
	mu      sync.Mutex
}

func (g *gatedSource) open(context.Context) (io.ReadCloser, int64, error) {
	g.mu.Lock()
	g.calls++
	g.mu.Unlock()
	return io.NopCloser(&gatedReader{g: g}), g.size, nil
}

type gatedReader struct {
	g   *gatedSource
	off int
}

func (r *gatedReader) Read(p []byte) (int, error) {
	n, ok := <-r.g.step
	if !ok {
		if r.g.fail != nil {
			return 0, r.g.fail
		}
		if r.off < len(r.g.content) {
			n = len(r.g.content) - r.off
		} else {
			return 0, io.EOF
		}
	}
	n = min(n, len(p), len(r.g.content)-r.off)
	copy(p, r.g.content[r.off:r.off+n])
	r.off += n
	return n, nil
}

func readN(t *testing.T, r io.Reader, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		t.Fatalf("read %d: %v", n, err)
	}
	return b
}

func TestFillStreamsAndCommits(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openStore(t, Options{Dir: dir})
	content := bytes.Repeat([]byte("0123456789"), 1000)
	d := digestOf(content)
	src := &gatedSource{content: content, size: int64(len(content)), step: make(chan int)}

	f, started, err := s.Fill(t.Context(), "mirror/a", d, src.open)
	if err != nil || !started {
		t.Fatalf("Fill: %v %v", started, err)
	}
	f2, started2, err := s.Fill(t.Context(), "mirror/b", d, src.open)
	if err != nil || started2 || f2 != f {
		t.Fatalf("second Fill must join the first: %v %v", started2, err)
	}
	ctx := context.Background()
	r1, err := f.Reader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	// Bytes reach a reader before the source has finished.
	src.step <- 100
	if got := readN(t, r1, 100); !bytes.Equal(got, content[:100]) {
		t.Fatal("first bytes differ")
	}
	// A reader that joins late reads from the start.
	r2, err := f.Reader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if got := readN(t, r2, 100); !bytes.Equal(got, content[:100]) {
		t.Fatal("late reader: first bytes differ")
	}
	// All but the last byte arrive; the last is held back until verified.
	src.step <- len(content) - 101
	readN(t, r1, len(content)-101)
	got1 := make(chan []byte)
	go func() { b, _ := io.ReadAll(r1); got1 <- b }()
	select {
	case <-got1:
		t.Fatal("last byte given before the fill was verified")
	case <-time.After(20 * time.Millisecond):
	}
	src.step <- 1
	close(src.step)
	if b := <-got1; !bytes.Equal(b, content[len(content)-1:]) {
		t.Fatalf("tail = %q", b)
	}
	if err := f.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.HasBlob(ctx, "mirror/a", d); err != nil {
		t.Fatalf("filled blob not linked to the starting repo: %v", err)
	}
	if src.calls != 1 || s.Fills() != 0 {
		t.Fatalf("calls=%d fills=%d", src.calls, s.Fills())
	}
	// Committed: a new Fill is done at once and never calls the source.
	f3, started3, err := s.Fill(ctx, "mirror/c", d, src.open)
	if err != nil || started3 || src.calls != 1 {
		t.Fatalf("Fill of a stored blob: %v %v calls=%d", started3, err, src.calls)
	}
	r3, err := f3.Reader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer r3.Close()
	if n, _ := r3.Seek(0, io.SeekEnd); n != int64(len(content)) {
		t.Fatalf("size %d", n)
	}
	r3.Seek(10, io.SeekStart)
	if b, _ := io.ReadAll(r3); !bytes.Equal(b, content[10:]) {
		t.Fatal("committed reader differs")
	}
	if got := dirEntries(t, filepath.Join(dir, "tmp")); len(got) != 0 {
		t.Errorf("tmp/ not empty: %v", got)
	}
}

func TestFillFailures(t *testing.T) {
	t.Parallel()
	content := bytes.Repeat([]byte("x"), 5000)
	broken := errors.New("connection reset")
	tests := []struct {
		name    string
		digest  Digest
		size    int64
		fail    error
		wantErr error
	}{
		{"digest mismatch", digestOf([]byte("other")), int64(len(content)), nil, ErrDigestMismatch},
		{"source breaks", digestOf(content), int64(len(content)) * 2, broken, broken},
		{"too short", digestOf(content), int64(len(content)) + 1, nil, ErrSizeMismatch},
		{"too long", digestOf(content), int64(len(content)) - 1, nil, ErrSizeMismatch},
		{"unknown size mismatch", digestOf([]byte("other")), -1, nil, ErrDigestMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			s := openStore(t, Options{Dir: dir})
			src := &gatedSource{content: content, size: tt.size, step: make(chan int), fail: tt.fail}
			f, _, err := s.Fill(t.Context(), "m/a", tt.digest, src.open)
			if err != nil {
				t.Fatal(err)
			}
			r, err := f.Reader(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			src.step <- 1000
			readN(t, r, 1000)
			close(src.step)
			_, err = io.ReadAll(r)
			if !errors.Is(err, ErrFillFailed) || !errors.Is(err, tt.wantErr) {
				t.Fatalf("reader err = %v, want %v", err, tt.wantErr)
			}
			if !errors.Is(r.Err(), ErrFillFailed) {
				t.Fatalf("Err() = %v", r.Err())
			}
			if err := f.Wait(context.Background()); !errors.Is(err, tt.wantErr) {
				t.Fatalf("Wait = %v", err)
			}
			if _, err := s.StatBlob(t.Context(), tt.digest); !errors.Is(err, ErrBlobUnknown) {
				t.Fatalf("failed fill left a blob: %v", err)
			}
			if got := dirEntries(t, filepath.Join(dir, "tmp")); len(got) != 0 {
				t.Errorf("tmp/ not empty: %v", got)
			}
			// A new Fill after a failure starts afresh.
			if _, started, err := s.Fill(t.Context(), "m/a", tt.digest, src.open); err != nil || !started {
				t.Fatalf("refill: %v %v", started, err)
			}
		})
	}
}

func TestFillSourceError(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openStore(t, Options{Dir: dir})
	want := errors.New("upstream 404")
	f, _, err := s.Fill(t.Context(), "m/a", digestOf([]byte("a")), func(context.Context) (io.ReadCloser, int64, error) { return nil, 0, want })
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Ready(context.Background()); !errors.Is(err, want) {
		t.Fatalf("Ready = %v", err)
	}
	if _, err := f.Reader(context.Background()); !errors.Is(err, want) {
		t.Fatalf("Reader = %v", err)
	}
	_ = f.Wait(context.Background())
	if got := dirEntries(t, filepath.Join(dir, "tmp")); len(got) != 0 {
		t.Errorf("a source that never opened left tmp/ %v", got)
	}
}

// The fill's temp file is made while the source's request is in flight,
// not after the answer, where it would delay a cold GET's first byte.
func TestFillTempFileWhileSourceAsks(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openStore(t, Options{Dir: dir})
	content := []byte("cold blob")
	sawTemp := make(chan bool, 1)
	src := func(context.Context) (io.ReadCloser, int64, error) {
		// Upstream is still answering: the temp file should appear.
		// (os.ReadDir: not on the test's goroutine, so no t.Fatal.)
		temps := func() int { es, _ := os.ReadDir(filepath.Join(dir, "tmp")); return len(es) }
		for deadline := time.Now().Add(5 * time.Second); temps() == 0 && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		sawTemp <- temps() == 1
		return io.NopCloser(bytes.NewReader(content)), int64(len(content)), nil
	}
	f, _, err := s.Fill(t.Context(), "m/a", digestOf(content), src)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	if !<-sawTemp {
		t.Error("no temp file while the source was asked")
	}
	if got := dirEntries(t, filepath.Join(dir, "tmp")); len(got) != 0 {
		t.Errorf("tmp/ after commit: %v", got)
	}
	if _, err := s.StatBlob(t.Context(), digestOf(content)); err != nil {
		t.Fatal(err)
	}
}

func TestFillReaderContext(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{Dir: t.TempDir()})
	content := []byte("abcdef")
	src := &gatedSource{content: content, size: 6, step: make(chan int)}
	f, _, _ := s.Fill(t.Context(), "m/a", digestOf(content), src.open)
	ctx, cancel := context.WithCancel(context.Background())
	r, err := f.Reader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cancel()
	if _, err := r.Read(make([]byte, 4)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Read after cancel = %v", err)
	}
	// The reader's client going away does not stop the fill.
	close(src.step)
	if err := f.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.HasBlob(ctx, "m/a", digestOf(content)); err != nil {
		t.Fatal(err)
	}
}

func TestTagInfo(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{Dir: t.TempDir()})
	body := []byte(`{"schemaVersion":2}`)
	m := Manifest{Digest: digestOf(body), MediaType: "application/vnd.oci.image.manifest.v1+json"}
	if err := s.PutManifest(t.Context(), "m/a", m, body, []string{"v1"}); err != nil {
		t.Fatal(err)
	}
	ti, err := s.TagInfo(t.Context(), "m/a", "v1")
	if err != nil || ti.Digest != m.Digest || !ti.Fetched.IsZero() {
		t.Fatalf("TagInfo = %+v, %v", ti, err)
	}
	at := time.Unix(1700000000, 123)
	if err := s.SetTagFetched(t.Context(), "m/a", "v1", at); err != nil {
		t.Fatal(err)
	}
	if ti, _ := s.TagInfo(t.Context(), "m/a", "v1"); !ti.Fetched.Equal(at) {
		t.Fatalf("Fetched = %v", ti.Fetched)
	}
	if err := s.SetTagFetched(t.Context(), "m/a", "nope", at); !errors.Is(err, ErrTagUnknown) {
		t.Fatalf("SetTagFetched unknown = %v", err)
	}
	if _, err := s.TagInfo(t.Context(), "m/a", "nope"); !errors.Is(err, ErrTagUnknown) {
		t.Fatalf("TagInfo unknown = %v", err)
	}
	// Deleting the tag forgets its time: a re-created tag starts unconfirmed.
	if err := s.DeleteTag(t.Context(), "m/a", "v1"); err != nil {
		t.Fatal(err)
	}
	if err := s.PutManifest(t.Context(), "m/a", m, body, []string{"v1"}); err != nil {
		t.Fatal(err)
	}
	if ti, _ := s.TagInfo(t.Context(), "m/a", "v1"); !ti.Fetched.IsZero() {
		t.Fatalf("Fetched survived DeleteTag: %v", ti.Fetched)
	}
	s.SetTagFetched(t.Context(), "m/a", "v1", at)
	if err := s.DeleteManifest(t.Context(), "m/a", m.Digest); err != nil {
		t.Fatal(err)
	}
	s.PutManifest(t.Context(), "m/a", m, body, []string{"v1"})
	if ti, _ := s.TagInfo(t.Context(), "m/a", "v1"); !ti.Fetched.IsZero() {
		t.Fatalf("Fetched survived DeleteManifest: %v", ti.Fetched)
	}
}

// PutFetchedManifest stores the manifest, points the tag at it and
// records the fetch time at once.
func TestPutFetchedManifest(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{Dir: t.TempDir()})
	body := []byte(`{"schemaVersion":2}`)
	m := Manifest{Digest: digestOf(body), MediaType: "application/vnd.oci.image.manifest.v1+json"}
	at := time.Unix(1700000000, 456)
	if err := s.PutFetchedManifest(t.Context(), "m/a", m, body, "v1", at); err != nil {
		t.Fatal(err)
	}
	ti, err := s.TagInfo(t.Context(), "m/a", "v1")
	if err != nil || ti.Digest != m.Digest || !ti.Fetched.Equal(at) {
		t.Fatalf("TagInfo = %+v, %v", ti, err)
	}
	if _, got, err := s.GetManifest(t.Context(), "m/a", m.Digest); err != nil || string(got) != string(body) {
		t.Fatalf("GetManifest = %q, %v", got, err)
	}
	if err := s.PutFetchedManifest(t.Context(), "m/a", m, body, "v1", time.Time{}); err == nil {
		t.Error("PutFetchedManifest without a time succeeded")
	}
	if err := s.PutFetchedManifest(t.Context(), "m/a", m, body, "", at); err == nil {
		t.Error("PutFetchedManifest of an empty tag succeeded")
	}
	if err := s.PutFetchedManifest(t.Context(), "m/a", m, []byte(`{}`), "v2", at); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("PutFetchedManifest of other bytes = %v, want ErrDigestMismatch", err)
	}
}

// A fill's reader gets the source's first bytes while the fill's temp
// file is still being created: a cold GET's first byte waits for no
// create, write or read of the file (on a loaded machine each is a wait
// for the disk's journal or for a core). The rest follows through the
// file once it exists, and the blob commits whole.
func TestFillFirstBytesBeforeTempFile(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{Dir: t.TempDir()})
	release := make(chan struct{})
	s.fillTempGate = func() { <-release }
	content := bytes.Repeat([]byte("first bytes, then the file "), 4096)
	src := &gatedSource{content: content, size: int64(len(content)), step: make(chan int, 1)}
	src.step <- 100
	d := digestOf(content)
	f, started, err := s.Fill(t.Context(), "m/a", d, src.open)
	if err != nil || !started {
		t.Fatalf("fill: %v (started %v)", err, started)
	}
	// The reader is asked for on its own goroutine too: before, even
	// Reader waited for the file.
	readers := make(chan FillReader, 1)
	got := make(chan []byte, 1)
	go func() {
		r, err := f.Reader(t.Context())
		if err != nil {
			close(readers)
			got <- nil
			return
		}
		readers <- r
		b := make([]byte, 100)
		n, _ := io.ReadFull(r, b)
		got <- b[:n]
	}()
	select {
	case b := <-got:
		if !bytes.Equal(b, content[:100]) {
			t.Fatalf("first bytes %q, want %q", b, content[:100])
		}
	case <-time.After(5 * time.Second):
		close(release)
		close(src.step)
		t.Fatal("the reader's first bytes waited for the fill's temp file")
	}
	close(release)
	close(src.step) // the rest at once
	r, ok := <-readers
	if !ok {
		t.Fatal("no reader")
	}
	defer r.Close()
	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rest, content[100:]) {
		t.Fatalf("rest: %d bytes, want %d", len(rest), len(content)-100)
	}
	if err := f.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.HasBlob(t.Context(), "m/a", d); err != nil {
		t.Fatal(err)
	}
}

// TestFillSpoolFailureMarked: a fill whose local copy cannot be made (its
// temporary folder unusable) fails with ErrFillSpool wrapping the
// filesystem's error, so the registry answers it as its storage's failure.
// Before, nothing told it from the source's failure, and a client could
// get 502 "upstream failed" for a read-only disk.
func TestFillSpoolFailureMarked(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{Dir: t.TempDir()})
	if err := os.RemoveAll(s.tmpDir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.tmpDir, nil, 0o644); err != nil { // a file where the folder was
		t.Fatal(err)
	}
	content := bytes.Repeat([]byte("upstream bytes "), 1000)
	src := &gatedSource{content: content, size: int64(len(content)), step: make(chan int, 1)}
	src.step <- len(content)
	f, started, err := s.Fill(t.Context(), "m/a", digestOf(content), src.open)
	if err != nil || !started {
		t.Fatalf("fill: %v (started %v)", err, started)
	}
	err = f.Wait(t.Context())
	if !errors.Is(err, ErrFillSpool) || !errors.Is(err, syscall.ENOTDIR) {
		t.Fatalf("fill with its temporary folder unusable: %v, want ErrFillSpool wrapping ENOTDIR", err)
	}
}

// A reader opened once a fill is verified, while its commit (the sync,
// the install under its digest) has not ended, reads the whole blob, and
// keeps reading it across the install: a client joining such a fill is
// served at once, not after the commit.
func TestFillReaderWhileCommitting(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{Dir: t.TempDir()})
	verified, release := make(chan struct{}), make(chan struct{})
	s.fillCommitGate = func() { close(verified); <-release }
	content := bytes.Repeat([]byte("verified, not committed "), 40000)
	d := digestOf(content)
	src := func(context.Context) (io.ReadCloser, int64, error) {
		return io.NopCloser(bytes.NewReader(content)), int64(len(content)), nil
	}
	f, started, err := s.Fill(t.Context(), "m/a", d, src)
	if err != nil || !started {
		t.Fatalf("fill: %v (started %v)", err, started)
	}
	<-verified
	if !f.Verified() {
		t.Fatal("fill at its commit does not report Verified")
	}
	r, err := f.Reader(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	half := make([]byte, len(content)/2)
	if _, err := io.ReadFull(r, half); err != nil {
		t.Fatalf("read while committing: %v", err)
	}
	select {
	case <-f.Done():
		t.Fatal("fill done while its commit is held")
	default:
	}
	close(release) // the install renames the file under the reader
	if err := f.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(append(half, rest...), content) {
		t.Fatalf("blob read across the commit differs (err %v)", err)
	}
	if _, err := s.HasBlob(t.Context(), "m/a", d); err != nil {
		t.Fatalf("blob not linked after the commit: %v", err)
	}
}
