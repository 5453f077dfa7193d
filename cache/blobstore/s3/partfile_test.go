package s3

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
)

// openPartFiles counts the part files (partfile.go) this process holds
// open.
func openPartFiles(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd:", err)
	}
	n := 0
	for _, fd := range fds {
		if target, err := os.Readlink("/proc/self/fd/" + fd.Name()); err == nil && strings.Contains(target, "caddy-oci-s3-part-") {
			n++
		}
	}
	return n
}

// failAfter is a reader of b that fails once it has given n bytes.
type failAfter struct {
	r *bytes.Reader
	n int
}

var errClientGone = errors.New("client gone")

func (f *failAfter) Read(p []byte) (int, error) {
	if f.n == 0 {
		return 0, errClientGone
	}
	if len(p) > f.n {
		p = p[:f.n]
	}
	k, err := f.r.Read(p)
	f.n -= k
	return k, err
}

// cancelAfter is a reader of b that cancels its request once it has given
// n bytes, as a client that goes away mid-chunk does.
type cancelAfter struct {
	r      *bytes.Reader
	n      int
	cancel context.CancelFunc
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	if c.n == 0 {
		c.cancel()
		return 0, context.Canceled
	}
	if len(p) > c.n {
		p = p[:c.n]
	}
	k, err := c.r.Read(p)
	c.n -= k
	return k, err
}

func wantBytes(t *testing.T, s *Store, d blobstore.Digest, want []byte) {
	t.Helper()
	b, err := s.Open(ctx(t), d)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer b.Close()
	got, err := io.ReadAll(b)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("blob holds %d bytes that differ from the %d pushed", len(got), len(want))
	}
}

// TestPartFilesReused: an upload of more parts than partsInFlight+1
// fills files whose part has gone again (the third send waits for a slot,
// which frees only once a file is back), so each reused file must start
// empty with fresh checksums; the contract's pushes are too short to be
// sure of it. Whatever happens, no part file stays open.
func TestPartFilesReused(t *testing.T) {
	srv := s3test.Start(t)
	s := newStore(t, srv, srv.Bucket(t), "reuse/")
	before := openPartFiles(t)

	// A blob of unknown size: five parts and 3 bytes.
	blob := randomBytes(5*minPartSize + 3)
	d := blobstore.FromBytes(blobstore.SHA256, blob)
	if _, err := s.Put(ctx(t), d, -1, bytes.NewReader(blob)); err != nil {
		t.Fatalf("Put: %v", err)
	}
	wantBytes(t, s, d, blob)
	small := randomBytes(100) // one PUT from the first part's file
	ds := blobstore.FromBytes(blobstore.SHA256, small)
	if _, err := s.Put(ctx(t), ds, -1, bytes.NewReader(small)); err != nil {
		t.Fatalf("Put: %v", err)
	}
	wantBytes(t, s, ds, small)

	// A session: a tail, then a chunk that reads it back and fills five
	// parts and a tail, then a small chunk.
	c := randomBytes(6*minPartSize + 100)
	dc := blobstore.FromBytes(blobstore.SHA256, c)
	ss, err := s.NewSession(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, cut := range [][2]int{{0, minPartSize/2 + 7}, {minPartSize/2 + 7, len(c) - 13}, {len(c) - 13, len(c)}} {
		if _, err := ss.Append(ctx(t), int64(cut[0]), bytes.NewReader(c[cut[0]:cut[1]])); err != nil {
			t.Fatalf("Append [%d, %d): %v", cut[0], cut[1], err)
		}
	}
	if _, err := ss.Commit(ctx(t), dc, int64(len(c))); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	wantBytes(t, s, dc, c)
	if n := openPartFiles(t) - before; n != 0 {
		t.Errorf("%d part files left open after pushes that succeeded", n)
	}

	// Failures after three and a half parts: the client's reader fails,
	// or the request is cancelled.
	failAt := 3*minPartSize + minPartSize/2
	other := randomBytes(5 * minPartSize)
	do := blobstore.FromBytes(blobstore.SHA256, other)
	if _, err := s.Put(ctx(t), do, -1, &failAfter{r: bytes.NewReader(other), n: failAt}); !errors.Is(err, errClientGone) {
		t.Errorf("Put from a failing reader = %v, want its error", err)
	}
	if _, err := s.Put(ctx(t), do, -1, &failAfter{r: bytes.NewReader(other), n: 100}); !errors.Is(err, errClientGone) {
		t.Errorf("Put from a failing reader = %v, want its error", err)
	}
	pctx, cancel := context.WithCancel(ctx(t))
	if _, err := s.Put(pctx, do, -1, &cancelAfter{r: bytes.NewReader(other), n: failAt, cancel: cancel}); err == nil {
		t.Error("Put whose request was cancelled succeeded")
	}
	for _, mk := range []func() (context.Context, io.Reader){
		func() (context.Context, io.Reader) {
			return ctx(t), &failAfter{r: bytes.NewReader(other), n: failAt}
		},
		func() (context.Context, io.Reader) {
			c, cancel := context.WithCancel(ctx(t))
			return c, &cancelAfter{r: bytes.NewReader(other), n: failAt, cancel: cancel}
		},
	} {
		ss, err := s.NewSession(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ss.Append(ctx(t), 0, bytes.NewReader(other[:7])); err != nil {
			t.Fatal(err)
		}
		actx, r := mk()
		if _, err := ss.Append(actx, 7, r); err == nil {
			t.Error("Append from a failing reader succeeded")
		}
		if ss.Size() != 7 {
			t.Errorf("session size %d after a failed Append, want 7", ss.Size())
		}
	}
	if _, err := s.Stat(ctx(t), do); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Stat after failed Puts = %v, want ErrNotFound", err)
	}
	if n := openPartFiles(t) - before; n != 0 {
		t.Errorf("%d part files left open after pushes that failed", n)
	}
}

// partFileBytes is what the part files this process holds open hold.
func partFileBytes(t *testing.T) int64 {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd:", err)
	}
	var n int64
	for _, fd := range fds {
		name := "/proc/self/fd/" + fd.Name()
		if target, err := os.Readlink(name); err == nil && strings.Contains(target, "caddy-oci-s3-part-") {
			if fi, err := os.Stat(name); err == nil {
				n += fi.Size()
			}
		}
	}
	return n
}

// stallAfter gives n bytes of r, then waits for release and fails.
type stallAfter struct {
	r       *bytes.Reader
	n       int
	release chan struct{}
}

func (s *stallAfter) Read(p []byte) (int, error) {
	if s.n == 0 {
		<-s.release
		return 0, errClientGone
	}
	if len(p) > s.n {
		p = p[:s.n]
	}
	k, err := s.r.Read(p)
	s.n -= k
	return k, err
}

// TestStalledChunkHoldsNoGonePart: a chunk that stalls after a part and a
// half must hold only the half on local disk (in RAM where the temporary
// folder is a tmpfs): the file of the part that has gone to S3 was kept
// whole until it filled again, so 100 stalled chunks held 900 MiB.
func TestStalledChunkHoldsNoGonePart(t *testing.T) {
	srv := s3test.Start(t)
	s := newStore(t, srv, srv.Bucket(t), "stall/")
	ss, err := s.NewSession(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	half := minPartSize / 2
	r := &stallAfter{r: bytes.NewReader(randomBytes(2 * minPartSize)), n: minPartSize + half, release: make(chan struct{})}
	done := make(chan error)
	go func() {
		_, err := ss.Append(ctx(t), 0, r)
		done <- err
	}()
	held := int64(-1)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if held = partFileBytes(t); held == int64(half) {
			break
		}
	}
	close(r.release)
	if err := <-done; !errors.Is(err, errClientGone) {
		t.Errorf("stalled Append = %v, want the reader's error", err)
	}
	if held != int64(half) {
		t.Errorf("a chunk stalled after %d bytes held %d bytes in part files, want %d", minPartSize+half, held, half)
	}
}

// TestTailReadBackChecked: a tail's SHA-256, recorded in the session's
// state, is taken from the file read back, and only if the file still
// holds the bytes that came in; a file changed under the part is refused
// rather than recorded and uploaded.
func TestTailReadBackChecked(t *testing.T) {
	p, err := newPartFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	in := []byte("the tail of a chunk")
	if _, err := p.fill(bytes.NewReader(in), sha256.New(), 1<<20); err != io.EOF {
		t.Fatalf("fill: %v, want io.EOF", err)
	}
	sum, err := p.tailSHA256()
	if want := sha256.Sum256(in); err != nil || !bytes.Equal(sum, want[:]) {
		t.Fatalf("tailSHA256 = %x, %v; want %x", sum, err, want)
	}
	if _, err := p.f.WriteAt([]byte("T"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := p.tailSHA256(); err == nil {
		t.Error("a part file changed after its bytes came in was hashed as if whole")
	}
}
