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
// Until its store write ends, the answer is kept here, so the requests
// that follow it — a HEAD right after the GET, the same tag from another
// client — are answered from it as they would be from the store, not by
// another upstream GET.

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"
)

const (
	// pendingStoreTimeout bounds one store write that runs after its
	// answer.
	pendingStoreTimeout = 30 * time.Second
	// maxPendingBytes bounds the manifest bytes a mirror holds while
	// their store writes run; past it, a manifest is stored before it is
	// answered (a store slower than the pulls slows them down, as it
	// did before, instead of growing memory).
	maxPendingBytes = 8 << 20
)

// pendingManifest is an answer whose store write has not ended.
type pendingManifest struct {
	res     mirroredManifest
	fetched time.Time     // when upstream gave it, on the mirror's clock
	done    chan struct{} // closed once the store write ended, either way
}

// pendingManifests are a mirror's answers whose store writes run, by the
// keys of its single-flight group: "repo@digest" and "repo:tag".
type pendingManifests struct {
	mu    sync.Mutex
	byKey map[string]*pendingManifest
	bytes int64
	wg    sync.WaitGroup // the store writes running
}

// get returns the answer pending under key, or nil.
func (p *pendingManifests) get(key string) *pendingManifest {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.byKey[key]
}

// add holds e under keys while its store write runs, unless that would
// pass maxPendingBytes or another write for one of the keys still runs
// (whose end it returns, to wait for: two writes of one tag must end in
// the order they were fetched). ok reports that e was added.
func (p *pendingManifests) add(keys []string, e *pendingManifest) (ok bool, busy <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, k := range keys {
		if o := p.byKey[k]; o != nil {
			return false, o.done
		}
	}
	n := int64(len(e.res.body))
	if p.bytes+n > maxPendingBytes {
		return false, nil
	}
	if p.byKey == nil {
		p.byKey = map[string]*pendingManifest{}
	}
	for _, k := range keys {
		p.byKey[k] = e
	}
	p.bytes += n
	p.wg.Add(1)
	return true, nil
}

// remove lets go of e once its store write ended: from then on the store
// answers for it.
func (p *pendingManifests) remove(keys []string, e *pendingManifest) {
	p.mu.Lock()
	for _, k := range keys {
		if p.byKey[k] == e {
			delete(p.byKey, k)
		}
	}
	p.bytes -= int64(len(e.res.body))
	p.mu.Unlock()
	close(e.done)
	p.wg.Done()
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

// drain waits until every store write running now has ended, or ctx.
func (p *pendingManifests) drain(ctx context.Context) error {
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

// pendingAnswer returns the answer pending under key if it may be served:
// by digest always (content does not change), by tag inside the tag's
// TTL. Past the TTL it waits for the store write, so that the caller's
// revalidation starts from what the store then holds.
func (m *Mirror) pendingAnswer(ctx context.Context, key string, byTag bool) (mirroredManifest, bool) {
	e := m.pending.get(key)
	if e == nil {
		return mirroredManifest{}, false
	}
	if !byTag || m.now().Sub(e.fetched) < m.cfg.TagTTL {
		return e.res, true
	}
	m.pending.settle(ctx, key)
	return mirroredManifest{}, false
}

// keepFetched stores res, which upstream just gave for rc (and tag, if
// set) and checkUpstreamManifest passed, and returns once it may be
// served: at once, with the store write going on after the answer, when
// the mirror can hold it meanwhile; after the write otherwise. A store
// without room refuses it here, before anything is served.
func (h *Handler) keepFetched(ctx context.Context, rc *request, res mirroredManifest, tag string) error {
	m := rc.mirror
	if err := h.cfg.Store.CheckSpace(ctx, int64(len(res.body))); err != nil {
		return err
	}
	keys := []string{rc.name + "@" + res.m.Digest.String()}
	if tag != "" {
		keys = append(keys, rc.name+":"+tag)
	}
	e := &pendingManifest{res: res, fetched: m.now(), done: make(chan struct{})}
	for {
		ok, busy := m.pending.add(keys, e)
		if ok {
			break
		}
		if busy == nil {
			return h.storeUpstreamManifest(ctx, rc, res, tag)
		}
		select {
		case <-busy:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// The request's values (its repository, for a store made of several)
	// without its end: the write outlives the answer.
	ctx = context.WithoutCancel(ctx)
	go func() {
		defer m.pending.remove(keys, e)
		ctx, cancel := context.WithTimeout(ctx, pendingStoreTimeout)
		defer cancel()
		if err := h.storeUpstreamManifest(ctx, rc, res, tag); err != nil {
			h.cfg.Logger.Warn("storing a mirrored manifest after its answer failed; the next pull fetches it again",
				zap.String("repo", rc.name), zap.String("tag", tag),
				zap.String("digest", res.m.Digest.String()), zap.Error(err))
		}
	}()
	return nil
}

// Drain waits until the manifests that mirrors answered before storing
// them are stored (or failed to be), or until ctx ends. Call it before
// the store closes, so that a reload or a clean shutdown keeps them.
func (h *Handler) Drain(ctx context.Context) error {
	for _, m := range h.mirrors {
		if err := m.pending.drain(ctx); err != nil {
			return err
		}
	}
	return nil
}
