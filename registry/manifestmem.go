package registry

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/caddy-oci/caddy-oci/cache"
)

// Why manifest work takes turns by size:
//
// A manifest is read, hashed, decoded (its annotations become strings),
// turned into the store's record (the annotations again) and written, all
// in memory: about five times its size at once, with garbage besides. A
// manifest may be megabytes (max_manifest_size; annotations make it so),
// and nothing else bounds how many are handled at once: 64 pushes of
// 4 MiB manifests at once grew the server's peak RSS by 1.3 GiB. The work
// after the body is read therefore holds its size against a budget shared
// by the process, and waits while the budget is spent. Reading the body
// does not hold it: a client that trickles its manifest in would
// otherwise keep others waiting; what it costs is the bytes it has sent.
// Small manifests (kilobytes, nearly all of them) never wait in practice.

// manifestWorkBudget is how many bytes of manifests are decoded and stored
// at once across the process; a larger manifest takes all of it.
const manifestWorkBudget = 16 << 20

var manifestWork = semaphore.NewWeighted(manifestWorkBudget)

// holdManifestWork waits until size bytes of manifest work may run and
// returns the release; an error when ctx ends first.
func holdManifestWork(ctx context.Context, size int64) (func(), error) {
	n := min(max(size, 1), manifestWorkBudget)
	if err := manifestWork.Acquire(ctx, n); err != nil {
		return nil, err
	}
	return func() { manifestWork.Release(n) }, nil
}

// Why receiving a large manifest takes turns as well:
//
// A pushed manifest's bytes are held whole from the first byte read to
// the end of the push (hashed, decoded, stored), and manifestWork bounds
// only the work after the read: 100 pushes of 4 MiB manifests at once
// still grew the peak RSS by 845 MiB, and anyone who may push could grow
// it further with more clients. So a body that may be large (its
// Content-Length, else max_manifest_size) holds its size against a
// budget of its own before a byte is read, until the push ends (a
// mirror's manifest from upstream too, while it is read and checked),
// and a pushed one must arrive within its read timeout (longer for one
// of megabytes, transferTime): a client that trickles it keeps its share
// that long at most. Holding it whole from the start (not as bytes
// arrive) is what keeps this free of deadlock: a push never waits for
// more budget while holding some. Small manifests take nothing.
const manifestReceiveBudget = 64 << 20

// manifestLimits are the receiving budget and the transfer bounds of
// large manifests: one value for the process. A request reads it once
// and keeps what it read (the semaphore it acquired is the one it
// releases), so a test that puts in its own (withManifestLimits) never
// races a request still running from the test before.
type manifestLimits struct {
	receive *semaphore.Weighted
	// readTimeout and writeTimeout: how long a large manifest may take to
	// arrive or go out, at least (transferTime).
	readTimeout, writeTimeout time.Duration
	// minRate is the slowest a large manifest's bytes may move and still
	// be given past the timeout to arrive or go out: a 4 MiB manifest
	// is given 128 s, for a client on a link of 32 KiB/s.
	minRate int64
}

var currentManifestLimits atomic.Pointer[manifestLimits]

func init() {
	currentManifestLimits.Store(&manifestLimits{
		receive:     semaphore.NewWeighted(manifestReceiveBudget),
		readTimeout: 60 * time.Second, writeTimeout: 60 * time.Second,
		minRate: 32 << 10,
	})
}

// transferTime is how long size bytes of a manifest may take to arrive or
// go out: base, or longer at minRate. The bound is what frees a share of
// a budget a client that stopped holds; a slow client still gets its
// manifest.
func (l *manifestLimits) transferTime(base time.Duration, size int64) time.Duration {
	return max(base, time.Duration(size/l.minRate)*time.Second)
}

// receiveManifestBody reads the manifest body of r, at most limit+1
// bytes, once its share of the receiving budget is free, and returns it with
// the release of that share (held until the push is done with the bytes).
// errClientGone when the client leaves while waiting.
func receiveManifestBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, func(), error) {
	release, share, err := holdManifestReceive(r.Context(), r.ContentLength, limit)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", errClientGone, err)
	}
	if share == 0 {
		body, err := readManifestBody(r.Body, r.ContentLength, limit)
		return body, release, err
	}
	l := currentManifestLimits.Load()
	rc := http.NewResponseController(w)
	deadline := rc.SetReadDeadline(time.Now().Add(l.transferTime(l.readTimeout, share))) == nil
	body, err := readManifestBody(r.Body, r.ContentLength, limit)
	if deadline {
		// The connection may serve more requests: no deadline for them.
		_ = rc.SetReadDeadline(time.Time{})
	}
	if err != nil {
		release()
		return nil, nil, err
	}
	return body, release, nil
}

// pushedManifest is a pushed manifest's body received before its handler
// ran (movesTag), with the release of its receiving share.
type pushedManifest struct {
	body    []byte
	release func()
}

// done releases p's share; p may be nil.
func (p *pushedManifest) done() {
	if p != nil && p.release != nil {
		p.release()
		p.release = nil
	}
}

// holdManifestReceive waits until a manifest body of declared length
// (-1: unknown) up to limit may be received (from a client or a mirror's
// upstream), and returns the release of its share and the share (0 for a
// small one, which does not wait); an error when ctx ends first.
func holdManifestReceive(ctx context.Context, declared, limit int64) (func(), int64, error) {
	share := declared
	if share < 0 || share > limit {
		share = limit
	}
	if share <= smallManifest {
		return func() {}, 0, nil
	}
	share = min(share+1, manifestReceiveBudget) // +1: readManifestBody's extra byte
	budget := currentManifestLimits.Load().receive
	if err := budget.Acquire(ctx, share); err != nil {
		return nil, 0, err
	}
	return func() { budget.Release(share) }, share, nil
}

// errClientGone: the client left before its request could be served.
var errClientGone = errors.New("client gone")

// readManifestBody reads at most limit+1 bytes of body (one more tells
// "too large"). With a declared length it reads into one buffer of that
// size, instead of io.ReadAll's doubling copies.
func readManifestBody(body io.Reader, declared, limit int64) ([]byte, error) {
	if declared < 0 || declared > limit {
		return io.ReadAll(io.LimitReader(body, limit+1))
	}
	buf := make([]byte, declared+1) // the extra byte catches a longer body
	n, err := io.ReadFull(body, buf)
	switch err {
	case io.ErrUnexpectedEOF, io.EOF:
		return buf[:n], nil // the body ended: its length is n
	case nil:
		// Longer than declared (net/http stops a body at its length, so
		// not from it): the rest, up to the limit.
		rest, err := io.ReadAll(io.LimitReader(body, limit+1-int64(n)))
		return append(buf, rest...), err
	}
	return nil, err
}

// Why serving a large manifest takes turns too:
//
// A manifest GET or HEAD reads the manifest's record (annotations and
// all) and a GET its bytes too, and holds them until the client has
// them; nothing bounded how many were held at once: 200 pulls of a 4 MiB
// manifest at once grew the server's peak RSS by 560 MiB, and anyone who
// may pull could grow it without limit with one manifest and more
// clients. So a manifest that may be large holds twice its size (record
// and bytes) against a budget of its own (not manifestWork's: a pull
// must not wait behind pushes), before the store is read: its size is
// remembered from the last time it was served or pushed, and one never
// seen counts as max_manifest_size until it has been read (then it keeps
// only what its size needs, serveHold.fit). Small manifests, once seen,
// take nothing and never wait behind large ones. A large
// manifest's bytes must be taken within its write timeout (longer for
// one of megabytes, transferTime), so that a
// client that stops reading does not keep its share.
const (
	smallManifest       = 64 << 10
	manifestServeBudget = 64 << 20
	// maxManifestSizes bounds the sizes remembered (about 20 bytes
	// each): past it they are forgotten all at once.
	maxManifestSizes = 1 << 16
)

var manifestServe = semaphore.NewWeighted(manifestServeBudget)

// manifestSizes remembers manifests' sizes by digest (a digest's bytes,
// and so their size, are the same in every repository). It keys them by a
// 64-bit hash of the digest under a seed of this process's, not by the
// digest: at 50,000 manifests the digests' strings took 6.8 MiB of heap
// (and the peak RSS of a 50,000-image run went past its 150 MiB target),
// the hashes take about 1. Two digests of one hash would only share a
// size for this budget's accounting, and nobody can aim for that without
// the seed.
type manifestSizes struct {
	mu sync.Mutex
	m  map[uint64]int64
}

var manifestSizeSeed = maphash.MakeSeed()

func manifestSizeKey(d cache.Digest) uint64 { return maphash.Comparable(manifestSizeSeed, d) }

func (s *manifestSizes) get(d cache.Digest) (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.m[manifestSizeKey(d)]
	return n, ok
}

func (s *manifestSizes) set(d cache.Digest, n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil || len(s.m) >= maxManifestSizes {
		s.m = make(map[uint64]int64)
	}
	s.m[manifestSizeKey(d)] = n
}

// serveHold is a request's share of manifestServe.
type serveHold struct{ n int64 }

// hold waits until manifest d, whose size is unknown until seen (then
// taken as limit), may be read from the store to be served, and returns
// the request's share; an error when ctx ends first. A manifest known to
// be small does not wait.
func (s *manifestSizes) hold(ctx context.Context, d cache.Digest, limit int64) (*serveHold, error) {
	size, ok := s.get(d)
	if !ok {
		size = limit
	}
	n := serveShare(size)
	if n == 0 {
		return &serveHold{}, nil
	}
	if err := manifestServe.Acquire(ctx, n); err != nil {
		return nil, err
	}
	return &serveHold{n: n}, nil
}

// serveShare is what a manifest of size holds while it is served.
func serveShare(size int64) int64 {
	if size <= smallManifest {
		return 0
	}
	return min(2*size, manifestServeBudget)
}

// fit gives back, once the manifest has been read, what its real size
// does not need: a share taken for an unseen one (max_manifest_size)
// must not stay held, through the signature check and the write to a
// client that may read slowly, for a manifest of a few kilobytes.
func (h *serveHold) fit(size int64) {
	if need := serveShare(size); need < h.n {
		manifestServe.Release(h.n - need)
		h.n = need
	}
}

// release gives the share back.
func (h *serveHold) release() {
	if h.n > 0 {
		manifestServe.Release(h.n)
		h.n = 0
	}
}

// writeManifestBody writes a manifest's bytes, a large one within
// transferTime of it, and returns how many went out.
func writeManifestBody(w http.ResponseWriter, body []byte) int {
	if len(body) <= smallManifest {
		n, _ := w.Write(body)
		return n
	}
	l := currentManifestLimits.Load()
	rc := http.NewResponseController(w)
	if rc.SetWriteDeadline(time.Now().Add(l.transferTime(l.writeTimeout, int64(len(body))))) != nil {
		n, _ := w.Write(body)
		return n
	}
	n, _ := w.Write(body)
	_ = rc.Flush()
	// The connection may serve more requests: no deadline for them.
	_ = rc.SetWriteDeadline(time.Time{})
	return n
}
