package registry

// A cold mirrored manifest is answered as soon as its bytes are verified
// (checkUpstreamManifest); storing it, which on a local store means a
// file sync and a metadata sync (most of a cold pull's time to its first
// layer byte on a disk), goes on after the answer. A mirror's cache entry
// is no write anyone was promised: a crash before the store write ends
// loses it and the next pull fetches it again. The store write itself is
// unchanged, so what it makes visible is still whole, verified, and
// visible all at once (the bytes before the metadata that names them):
// no tag ever points at a manifest the store lacks.
//
// Until its store write ends, the answer is kept here (pendingManifests),
// bounded; every other store of a mirrored manifest takes its turn with
// these writes, key by key.

import (
	"cmp"
	"context"
	"sync"
	"time"

	"go.uber.org/zap"
)

const (
	// pendingStoreTimeout bounds one store write that runs after its
	// answer, as a whole: the manifest's bytes, its metadata, the tag's
	// fetch time. A store may give up sooner: PostgreSQL metadata
	// (pgmeta) ends each call after its own timeout, 5 s.
	pendingStoreTimeout = 10 * time.Second
	// DrainTimeout is how long to give Drain: every write it waits for
	// ends within pendingStoreTimeout of its start, and a store closed
	// sooner would close under one.
	DrainTimeout = pendingStoreTimeout + 2*time.Second
	// maxPendingBytes and maxPendingWrites bound the manifests a handler
	// (all its mirrors) holds while their store writes run, and those
	// writes, each a goroutine that a hung store (a PostgreSQL pool with
	// no free connection) would keep, with pushes queued behind them.
	// Past either, a manifest is stored before it is answered: a store
	// slower than the pulls slows them down, as it did before, instead
	// of growing memory.
	maxPendingBytes  = 8 << 20
	maxPendingWrites = 16
)

// pendingManifest is a store write of a mirrored manifest that has not
// ended, and the answer it keeps meanwhile.
type pendingManifest struct {
	res     mirroredManifest // res.write is this write
	fetched time.Time        // when upstream answered, on the mirror's clock
	// held: the write runs after its answer, counted in the bounds.
	held bool
	done chan struct{} // closed once the write ended, either way
	err  error         // how it ended; set before done closes
}

// pendingManifests are the store writes of mirrored manifests running,
// by the keys of the mirrors' single-flight groups ("repo@digest" and
// "repo:tag", repo being the stored name). Every write of a key takes
// its turn here, so two writes of one tag end in the order they started
// (a tag is never left on the older digest), and the requests that
// come meanwhile — a HEAD right after the GET, the same tag from another
// client — are answered from the write's manifest as they would be from
// the store, not by another upstream GET.
type pendingManifests struct {
	mu       sync.Mutex
	byKey    map[string]*pendingManifest
	bytes    int64         // of the held writes' manifests
	held     int           // held writes
	draining bool          // Drain was called: no write is held any more
	stop     chan struct{} // closed by drain (see stopping)
	wg       sync.WaitGroup
	// timeout of a held write; zero is pendingStoreTimeout (tests that
	// hold writes on a lock for long set more).
	timeout time.Duration
}

// get returns the write running under key, or nil.
func (p *pendingManifests) get(key string) *pendingManifest {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.byKey[key]
}

// add takes the keys for e, unless a write of one of them runs (whose
// end it returns, to wait for and try again). e is held (its write may
// run after its answer) if answer asks for it and the bounds allow.
func (p *pendingManifests) add(keys []string, e *pendingManifest, answer bool) (busy <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, k := range keys {
		if o := p.byKey[k]; o != nil {
			return o.done
		}
	}
	if p.byKey == nil {
		p.byKey = map[string]*pendingManifest{}
	}
	for _, k := range keys {
		p.byKey[k] = e
	}
	n := int64(len(e.res.body))
	if answer && !p.draining && p.bytes+n <= maxPendingBytes && p.held < maxPendingWrites {
		e.held = true
		p.bytes += n
		p.held++
		p.wg.Add(1) // under mu, never after drain set draining: no Add races Wait
	}
	return nil
}

// remove lets go of e once its store write ended with err: from then on
// the store answers for it.
func (p *pendingManifests) remove(keys []string, e *pendingManifest, err error) {
	p.mu.Lock()
	for _, k := range keys {
		if p.byKey[k] == e {
			delete(p.byKey, k)
		}
	}
	if e.held {
		p.bytes -= int64(len(e.res.body))
		p.held--
	}
	e.err = err
	p.mu.Unlock()
	close(e.done)
	if e.held {
		p.wg.Done()
	}
}

// settle waits until no store write for key runs (or ctx ends), so that
// what the store says next includes it.
func (p *pendingManifests) settle(ctx context.Context, key string) {
	for {
		e := p.get(key)
		if e == nil {
			return
		}
		select {
		case <-e.done:
		case <-ctx.Done():
			return
		}
	}
}

// settleRepo waits until the store writes for repo running now have
// ended (or ctx), so that a listing of what the store holds for repo
// includes them.
func (p *pendingManifests) settleRepo(ctx context.Context, repo string) {
	p.mu.Lock()
	var wait []*pendingManifest
	for k, e := range p.byKey {
		if len(k) > len(repo) && k[:len(repo)] == repo && (k[len(repo)] == ':' || k[len(repo)] == '@') {
			wait = append(wait, e)
		}
	}
	p.mu.Unlock()
	for _, e := range wait {
		select {
		case <-e.done:
		case <-ctx.Done():
			return
		}
	}
}

// drain holds no write from now on and waits until the held ones have
// ended, or ctx.
func (p *pendingManifests) drain(ctx context.Context) error {
	p.mu.Lock()
	if !p.draining {
		p.draining = true
		if p.stop == nil {
			p.stop = make(chan struct{})
		}
		close(p.stop)
	}
	p.mu.Unlock()
	done := make(chan struct{})
	go func() {
		p.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// stopping is closed once Drain is called: background work of the
// handler's mirrors that no request waits for (a prefetch) starts nothing
// more on a store about to close.
func (p *pendingManifests) stopping() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stop == nil {
		p.stop = make(chan struct{})
	}
	return p.stop
}

// pendingAnswer returns the manifest whose write runs under key if it
// may be served: by digest always (content does not change), by tag
// inside the tag's TTL. Past the TTL it waits for the store write, so
// that the caller's revalidation starts from what the store then holds.
func (h *Handler) pendingAnswer(ctx context.Context, m *Mirror, key string, byTag bool) (mirroredManifest, bool) {
	e := h.pending.get(key)
	if e == nil {
		return mirroredManifest{}, false
	}
	if !byTag || m.now().Sub(e.fetched) < m.cfg.TagTTL {
		return e.res, true
	}
	h.pending.settle(ctx, key)
	return mirroredManifest{}, false
}

// keepFetched stores res, which upstream just gave for rc (and tag, if
// set) and checkUpstreamManifest passed, and returns once it may be
// served: at once, with the store write going on after the answer, when
// the handler can hold it meanwhile; after the write otherwise. A store
// without room refuses it here, before anything is served. The result's
// write, when set, is the write still running.
func (h *Handler) keepFetched(ctx context.Context, rc *request, res mirroredManifest, tag string) (mirroredManifest, error) {
	if err := h.cfg.Store.CheckSpace(ctx, int64(len(res.body))); err != nil {
		return mirroredManifest{}, err
	}
	return h.storeInTurn(ctx, rc, res, tag, true)
}

// storeFetched stores res, which upstream gave for rc (and tag, if
// set), before it returns: after the writes of the same keys that run.
func (h *Handler) storeFetched(ctx context.Context, rc *request, res mirroredManifest, tag string) error {
	_, err := h.storeInTurn(ctx, rc, res, tag, false)
	return err
}

// storeInTurn is keepFetched (answer) or storeFetched: every store write
// of a mirrored manifest takes its turn in h.pending.
func (h *Handler) storeInTurn(ctx context.Context, rc *request, res mirroredManifest, tag string, answer bool) (mirroredManifest, error) {
	keys := []string{rc.name + "@" + res.m.Digest.String()}
	if tag != "" {
		keys = append(keys, rc.name+":"+tag)
	}
	e := &pendingManifest{res: res, fetched: res.fetched, done: make(chan struct{})}
	if e.fetched.IsZero() {
		e.fetched = rc.mirror.now()
	}
	e.res.write = e
	for {
		busy := h.pending.add(keys, e, answer)
		if busy == nil {
			break
		}
		select {
		case <-busy:
		case <-ctx.Done():
			return mirroredManifest{}, ctx.Err()
		}
	}
	if !e.held {
		err := h.storeUpstreamManifest(ctx, rc, res, tag)
		h.pending.remove(keys, e, err)
		if err != nil {
			return mirroredManifest{}, err
		}
		return res, nil
	}
	// The request's values (its repository, for a store made of several)
	// without its end: the write outlives the answer.
	wctx := context.WithoutCancel(ctx)
	timeout := cmp.Or(h.pending.timeout, pendingStoreTimeout)
	go func() {
		ctx, cancel := context.WithTimeout(wctx, timeout)
		defer cancel()
		err := h.storeUpstreamManifest(ctx, rc, res, tag)
		if err != nil {
			h.cfg.Logger.Warn("storing a mirrored manifest after its answer failed; the next pull fetches it again",
				zap.String("repo", rc.name), zap.String("tag", tag),
				zap.String("digest", res.m.Digest.String()), zap.Error(err))
		}
		h.pending.remove(keys, e, err)
	}()
	return e.res, nil
}

// awaitStored waits until the write of res, if it ran after an answer that a
// caller shared (a sync joining a pull's fetch), has ended, and stores
// res itself if that write failed, so that the caller reports stored
// only what is.
func (h *Handler) awaitStored(ctx context.Context, rc *request, res mirroredManifest, tag string) error {
	w := res.write
	if w == nil {
		return nil
	}
	select {
	case <-w.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	if w.err == nil {
		return nil
	}
	return h.storeFetched(ctx, rc, res, tag)
}

// Drain waits until the manifests that mirrors answered before storing
// them are stored (or failed to be), or until ctx ends; give it
// DrainTimeout. From its call on, manifests are stored before they are
// answered. Call it before the store closes, so that a reload or a
// clean shutdown keeps them and requests still running then store
// nothing after.
func (h *Handler) Drain(ctx context.Context) error {
	return h.pending.drain(ctx)
}
