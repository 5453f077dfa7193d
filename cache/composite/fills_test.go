package composite

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/coord"
	"github.com/caddy-oci/caddy-oci/cache/metastore"
)

// slowSource serves data in pieces with a pause between them, counting
// how often it is opened and how many bytes it sends.
type slowSource struct {
	data  []byte
	opens atomic.Int64
	sent  atomic.Int64
	fail  bool // break off half-way
}

func (s *slowSource) open(context.Context) (io.ReadCloser, int64, error) {
	s.opens.Add(1)
	return io.NopCloser(&slowReader{src: s}), int64(len(s.data)), nil
}

type slowReader struct {
	src *slowSource
	off int
}

func (r *slowReader) Read(p []byte) (int, error) {
	if r.off >= len(r.src.data) {
		return 0, io.EOF
	}
	if r.src.fail && r.off >= len(r.src.data)/2 {
		return 0, errors.New("upstream reset the connection")
	}
	time.Sleep(5 * time.Millisecond)
	n := copy(p[:min(len(p), 64<<10)], r.src.data[r.off:])
	r.off += n
	r.src.sent.Add(int64(n))
	return n, nil
}

func readFill(t *testing.T, s *Store, repo string, d cache.Digest, src *slowSource) ([]byte, error) {
	f, _, err := s.FillAdmitted(ctx(t), repo, d, src.open, nil)
	if err != nil {
		return nil, err
	}
	r, err := f.Reader(ctx(t))
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

// Eight concurrent cold pulls of one blob spread over three replicas:
// the source is opened once and sends the blob once; every reader gets
// the whole blob; it is then committed, recorded and linked.
func TestFillOnceAcrossReplicas(t *testing.T) {
	each(t, func(t *testing.T, replica replicas) {
		rs := []*Store{replica(), replica(), replica()}
		for _, r := range rs {
			t.Cleanup(r.Close)
		}
		src := &slowSource{data: randomBytes(3<<20 + 7)}
		d := cache.FromBytes(cache.SHA256, src.data)
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Go(func() {
				got, err := readFill(t, rs[i%3], "docker.io/library/app", d, src)
				if err != nil {
					t.Errorf("reader %d: %v", i, err)
					return
				}
				if !bytes.Equal(got, src.data) {
					t.Errorf("reader %d: %d bytes, not the blob", i, len(got))
				}
			})
		}
		wg.Wait()
		if n, sent := src.opens.Load(), src.sent.Load(); n != 1 || sent != int64(len(src.data)) {
			t.Errorf("upstream opened %d times, sent %d bytes for a blob of %d: want once", n, sent, len(src.data))
		}
		for i, r := range rs {
			if _, err := r.HasBlob(ctx(t), "docker.io/library/app", d); err != nil {
				t.Errorf("replica %d: filled blob not linked: %v", i, err)
			}
		}
		// Warm: no source at all.
		if got, err := readFill(t, rs[1], "docker.io/library/app", d, src); err != nil || !bytes.Equal(got, src.data) || src.opens.Load() != 1 {
			t.Errorf("warm read: %v, opens %d", err, src.opens.Load())
		}
	})
}

// A fill whose source breaks fails for every reader (nothing presented as
// whole, nothing recorded), and the next request fills afresh.
func TestFillFailsThenRecovers(t *testing.T) {
	each(t, func(t *testing.T, replica replicas) {
		a, b := replica(), replica()
		t.Cleanup(a.Close)
		t.Cleanup(b.Close)
		bad := &slowSource{data: randomBytes(1 << 20), fail: true}
		d := cache.FromBytes(cache.SHA256, bad.data)
		var wg sync.WaitGroup
		for i, s := range []*Store{a, b, a, b} {
			wg.Go(func() {
				if got, err := readFill(t, s, "docker.io/library/app", d, bad); !errors.Is(err, cache.ErrFillFailed) {
					t.Errorf("reader %d of a broken fill: %d bytes, %v; want ErrFillFailed", i, len(got), err)
				}
			})
		}
		wg.Wait()
		if _, err := a.StatBlob(ctx(t), d); !errors.Is(err, cache.ErrBlobUnknown) {
			t.Fatalf("broken fill recorded: %v", err)
		}
		good := &slowSource{data: bad.data}
		if got, err := readFill(t, b, "docker.io/library/app", d, good); err != nil || !bytes.Equal(got, good.data) {
			t.Fatalf("fill after a broken one: %v", err)
		}
	})
}

// The fill's spool file is made while the source's request is in flight,
// not after the answer, where it would delay a cold GET's first byte; a
// source that fails leaves no spool file behind.
func TestFillSpoolWhileSourceAsks(t *testing.T) {
	each(t, func(t *testing.T, replica replicas) {
		s := replica()
		t.Cleanup(s.Close)
		s.spoolDir = t.TempDir()
		spools := func() int { es, _ := os.ReadDir(s.spoolDir); return len(es) }
		data := randomBytes(1000)
		d := cache.FromBytes(cache.SHA256, data)
		sawSpool := make(chan bool, 1)
		src := func(context.Context) (io.ReadCloser, int64, error) {
			for deadline := time.Now().Add(5 * time.Second); spools() == 0 && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
			}
			sawSpool <- spools() == 1
			return io.NopCloser(bytes.NewReader(data)), int64(len(data)), nil
		}
		f, _, err := s.FillAdmitted(ctx(t), "docker.io/library/app", d, src, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Wait(ctx(t)); err != nil {
			t.Fatal(err)
		}
		if !<-sawSpool {
			t.Error("no spool file while the source was asked")
		}
		refused := errors.New("upstream 404")
		f, _, err = s.FillAdmitted(ctx(t), "docker.io/library/app", cache.FromBytes(cache.SHA256, []byte("other")),
			func(context.Context) (io.ReadCloser, int64, error) { return nil, 0, refused }, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Wait(ctx(t)); !errors.Is(err, refused) {
			t.Fatalf("Wait = %v, want %v", err, refused)
		}
		if n := spools(); n != 0 {
			t.Errorf("%d spool files left", n)
		}
	})
}

// TestFillFailureFreesLeaseFirst: a broken fill gives its lease back
// before its readers learn of the failure, so a client's retry on another
// replica, sent at once, fills afresh. Before, the release came after:
// the retry found the lease still held, followed the fill already over,
// and answered 503 ("stopped before it committed"); a release slowed by
// the database (here 300 ms) made that every time.
func TestFillFailureFreesLeaseFirst(t *testing.T) {
	for _, b := range []struct {
		name string
		meta func(*testing.T) func() (metastore.Store, coord.Leases)
	}{{"postgres", pgMeta}, {"badger", badgerMeta}} {
		t.Run(b.name, func(t *testing.T) {
			blobs, meta := fsBlobs(t), b.meta(t)
			replica := func(slow bool) *Store {
				m, l := meta()
				if slow {
					l = slowRelease{l}
				}
				s, err := New(Options{Blobs: blobs(), Meta: m, Leases: l})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(s.Close)
				return s
			}
			a, other := replica(true), replica(false)
			bad := &slowSource{data: randomBytes(256 << 10), fail: true}
			d := cache.FromBytes(cache.SHA256, bad.data)
			if _, err := readFill(t, a, "docker.io/library/app", d, bad); !errors.Is(err, cache.ErrFillFailed) {
				t.Fatalf("reader of a broken fill: %v; want ErrFillFailed", err)
			}
			good := &slowSource{data: bad.data}
			if got, err := readFill(t, other, "docker.io/library/app", d, good); err != nil || !bytes.Equal(got, good.data) {
				t.Fatalf("retry on another replica right after the failure: %v", err)
			}
		})
	}
}

// slowRelease is a lease store whose releases take 300 ms, as over a slow
// or busy database.
type slowRelease struct{ coord.Leases }

func (s slowRelease) Acquire(ctx context.Context, key string, ttl time.Duration) (coord.Lease, bool, error) {
	l, ok, err := s.Leases.Acquire(ctx, key, ttl)
	if l != nil {
		l = slowLease{l}
	}
	return l, ok, err
}

type slowLease struct{ coord.Lease }

func (l slowLease) Release(ctx context.Context) error {
	time.Sleep(300 * time.Millisecond)
	return l.Lease.Release(ctx)
}
