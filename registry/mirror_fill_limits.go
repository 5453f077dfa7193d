package registry

// What an anonymous client can make a mirror fetch: a fill outlives the
// client that started it (so others can share it), so the cost of fills
// is bounded here instead, by a cap on a blob's size and one on the
// number of fills running at once.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/caddy-oci/caddy-oci/cache"
)

// Defaults of a MirrorConfig's fill limits.
const (
	DefaultMaxConcurrentFills = 64
	DefaultFillSlotWait       = 5 * time.Second
)

// errMirrorBlobTooLarge: upstream's blob is larger than the mirror
// fetches (MaxBlobSize).
var errMirrorBlobTooLarge = errors.New("blob larger than the mirror's limit")

// errNoFillSlot: the mirror runs as many fills as it may.
var errNoFillSlot = errors.New("too many blob fills in progress")

// mirrorBlobTooLarge is the answer to a blob the mirror will not fetch.
// 413 SIZE_INVALID, as for a push over max_blob_size: clients show the
// message, and a 4xx is not retried (retrying could never help), where a
// 5xx would be, and a 404 would send containerd to its next host with a
// lie.
func mirrorBlobTooLarge(m *Mirror, cause error) *Error {
	return newError(http.StatusRequestEntityTooLarge, CodeSizeInvalid,
		fmt.Sprintf("blob exceeds the limit of %d bytes of mirror %s", m.cfg.MaxBlobSize, m.cfg.Prefix), cause)
}

// checkBlobSize refuses a blob of size bytes (-1: unknown, allowed here)
// over the mirror's limit.
func (m *Mirror) checkBlobSize(size int64) error {
	if limit := m.cfg.MaxBlobSize; limit > 0 && size > limit {
		return fmt.Errorf("%w: upstream declares %d bytes", errMirrorBlobTooLarge, size)
	}
	return nil
}

// capBody cuts off body once it passes the mirror's limit: a source of
// unknown length then fails its fill, which keeps nothing.
func (m *Mirror) capBody(body io.ReadCloser) io.ReadCloser {
	if m.cfg.MaxBlobSize <= 0 {
		return body
	}
	return &cappedBody{ReadCloser: body, left: m.cfg.MaxBlobSize}
}

type cappedBody struct {
	io.ReadCloser
	left int64
}

func (b *cappedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	if b.left < 0 {
		return 0, fmt.Errorf("%w: upstream sent more", errMirrorBlobTooLarge)
	}
	return n, err
}

// fillSlots bounds the fills a mirror runs at once.
type fillSlots struct {
	mu    sync.Mutex
	max   int
	n     int
	freed chan struct{} // closed and replaced when a slot frees
}

func newFillSlots(max int) *fillSlots {
	return &fillSlots{max: max, freed: make(chan struct{})}
}

// take is a cache.FillAdmit: a slot, or errNoFillSlot at once.
func (s *fillSlots) take() (release func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n >= s.max {
		return nil, errNoFillSlot
	}
	s.n++
	var once sync.Once
	return func() { once.Do(s.give) }, nil
}

// takeSpare is take for work no client waits for (a prefetch): a slot
// only while at least half of them stay free after it.
func (s *fillSlots) takeSpare() (release func(), err error) {
	s.mu.Lock()
	spare := (s.n+1)*2 <= s.max
	s.mu.Unlock()
	if !spare {
		return nil, errNoFillSlot
	}
	return s.take()
}

func (s *fillSlots) give() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n--
	close(s.freed)
	s.freed = make(chan struct{})
}

// wait returns a channel closed when a slot frees after this call.
func (s *fillSlots) wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.freed
}

// startFill is Store.Fill under the mirror's cap on fills: joining a
// fill or finding the blob stored takes no slot; a new fill waits up to
// FillSlotWait for one, then gets errNoFillSlot.
func (m *Mirror) startFill(ctx context.Context, store Fills, repo string, d cache.Digest, lost bool) (cache.Fill, bool, error) {
	src := m.blobSource(repo, d)
	fill := store.FillAdmitted
	if rf, ok := store.(Refills); ok && lost {
		fill = rf.RefillAdmitted
	}
	// Made only once a slot is wanted: most calls join a fill or find the
	// blob stored, and need no timer.
	var timer *time.Timer
	for {
		freed := m.slots.wait() // before asking: a slot freed meanwhile is not missed
		f, started, err := fill(ctx, repo, d, src, m.slots.take)
		if !errors.Is(err, errNoFillSlot) {
			return f, started, err
		}
		if timer == nil {
			timer = time.NewTimer(m.cfg.FillSlotWait)
			defer timer.Stop()
		}
		select {
		case <-freed:
		case <-timer.C:
			return nil, false, err
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
	}
}

// errTooManyFills answers a new fill past the cap.
func errTooManyFills(m *Mirror, cause error) *Error {
	retry := max(int64(m.cfg.FillSlotWait/time.Second), 1)
	return newError(http.StatusTooManyRequests, CodeTooManyRequests,
		"mirror "+m.cfg.Prefix+" is fetching as many blobs as it may; try again later", cause).
		withHeader("Retry-After", strconv.FormatInt(retry, 10))
}
