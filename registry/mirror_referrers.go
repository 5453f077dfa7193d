package registry

import (
	"container/list"
	"context"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Referrers through a mirror: upstream's index is passed on as it is and
// kept in memory for tag_ttl, as a tag is. Signature checks at admission
// (cosign, notation, policy controllers) ask for the same subjects over
// and over; without the copy every one of them was an upstream request,
// and against Docker Hub's pull limits. A new referrer pushed upstream
// shows through the mirror within tag_ttl, as a moved tag does.
//
// What upstream answers is kept whatever it is: an index, or a refusal
// that is not temporary (an upstream without the API answers 404), after
// which the store's own list is served. When upstream fails for a while,
// an answer kept is served within stale_if_error, with a Warning; past it,
// or with none kept, the store's list.

const (
	// referrersCacheBytes bounds a mirror's copies of referrers indexes
	// (bodies, upstream's OCI-Filters-Applied and keys), referrersEntryMax
	// one of them: a longer index is passed on but not kept.
	referrersCacheBytes = 16 << 20
	referrersEntryMax   = 1 << 20
	// referrersEntryCost is what an entry costs besides its body and key.
	referrersEntryCost = 128
)

// referrersAnswer is upstream's answer to one referrers GET.
type referrersAnswer struct {
	body    []byte // nil: upstream has no list for it; the store's is served
	filters string // OCI-Filters-Applied
	fetched time.Time
	stale   bool // served past tag_ttl because upstream failed
}

// referrersCache keeps the answers, least recently used dropped first.
type referrersCache struct {
	mu    sync.Mutex
	order *list.List // of *referrersEntry, most recently used first
	byKey map[string]*list.Element
	bytes int64
}

type referrersEntry struct {
	key string
	a   referrersAnswer
}

func (c *referrersCache) get(key string) (referrersAnswer, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byKey[key]
	if !ok {
		return referrersAnswer{}, false
	}
	c.order.MoveToFront(e)
	return e.Value.(*referrersEntry).a, true
}

// entryCost is what an entry holds: upstream's header counts as its body
// does (a hostile upstream may send megabytes of it with a small index).
func entryCost(key string, a referrersAnswer) int64 {
	return int64(len(key)+len(a.body)+len(a.filters)) + referrersEntryCost
}

func (c *referrersCache) put(key string, a referrersAnswer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byKey == nil {
		c.byKey = make(map[string]*list.Element)
		c.order = list.New()
	}
	if e, ok := c.byKey[key]; ok {
		c.bytes -= entryCost(key, e.Value.(*referrersEntry).a)
		c.order.Remove(e)
		delete(c.byKey, key)
	}
	if len(a.body)+len(a.filters) > referrersEntryMax {
		return
	}
	c.byKey[key] = c.order.PushFront(&referrersEntry{key: key, a: a})
	c.bytes += entryCost(key, a)
	for c.bytes > referrersCacheBytes {
		last := c.order.Back()
		old := last.Value.(*referrersEntry)
		c.order.Remove(last)
		delete(c.byKey, old.key)
		c.bytes -= entryCost(old.key, old.a)
	}
}

// mirrorReferrers serves GET /v2/<name>/referrers/<digest> under a
// mirror: upstream's index (kept for tag_ttl, see above), or the index of
// what the store holds when upstream has none or fails.
func (h *Handler) mirrorReferrers(w http.ResponseWriter, r *http.Request, rc *request) error {
	m := rc.mirror
	d, err := parseDigestArg(rc.arg)
	if err != nil {
		return err
	}
	path := "referrers/" + d.String()
	if r.URL.Query().Has("artifactType") {
		path += "?" + url.Values{"artifactType": {r.URL.Query().Get("artifactType")}}.Encode()
	}
	key := m.upstreamName(rc.name) + "/" + path
	a, ok := m.referrers.get(key)
	fresh := ok && m.now().Sub(a.fetched) < m.cfg.TagTTL
	m.obs.MirrorLookup(m.cfg.Prefix, "referrers", fresh)
	if !fresh {
		if !ok {
			// Nothing kept: an upstream request this client pays for.
			if err := h.spendMiss(rc, key); err != nil {
				return err
			}
		}
		v, err, _ := m.revalidations.Do("referrers "+key, func() (any, error) {
			if a, ok := m.referrers.get(key); ok && m.now().Sub(a.fetched) < m.cfg.TagTTL {
				return a, nil // fetched after this request looked
			}
			ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), m.cfg.UpstreamTimeout)
			defer cancel()
			return h.fetchReferrers(ctx, rc, key, path)
		})
		if err != nil {
			h.pending.settleRepo(r.Context(), rc.name) // the manifests answered so far
			return h.referrers(w, r, rc)
		}
		a = v.(referrersAnswer)
	}
	if a.body == nil {
		h.pending.settleRepo(r.Context(), rc.name)
		return h.referrers(w, r, rc)
	}
	// The index takes its share of the receiving budget until it has gone
	// out, as a manifest from upstream does (manifestmem.go).
	sent, _, err := holdManifestReceive(r.Context(), int64(len(a.body)), h.cfg.MaxManifestSize)
	if err != nil {
		return errInternal(err) // the client left (499)
	}
	defer sent()
	hd := w.Header()
	if a.filters != "" {
		hd.Set("OCI-Filters-Applied", a.filters)
	}
	if a.stale {
		hd.Set("Warning", staleWarning)
	}
	hd.Set("Content-Type", MediaTypeOCIIndex)
	hd.Set("Content-Length", strconv.Itoa(len(a.body)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_ = writeManifestBody(w, a.body) // within its deadline: the share is held until then
	}
	return nil
}

// fetchReferrers asks upstream for the index at path and keeps its answer
// under key. A temporary failure gives the answer kept before, within
// stale_if_error, or the error.
func (h *Handler) fetchReferrers(ctx context.Context, rc *request, key, path string) (referrersAnswer, error) {
	m := rc.mirror
	a, err := h.askReferrers(ctx, rc, path)
	if err == nil || !temporary(err) {
		// An answer, or a refusal that will not change by asking again
		// at once (no such API, not found): kept either way.
		m.referrers.put(key, a)
		return a, nil
	}
	if old, ok := m.referrers.get(key); ok && m.now().Sub(old.fetched) < m.cfg.TagTTL+m.cfg.StaleIfError {
		h.cfg.Logger.Warn("upstream failed; serving the referrers kept",
			zap.String("repo", rc.name), zap.String("path", path), zap.Error(err))
		old.stale = true
		return old, nil
	}
	return referrersAnswer{}, err
}

// askReferrers is one upstream exchange. A body that is not one JSON
// object, or too large, counts as no list (the store's is served), as a
// refusal does.
func (h *Handler) askReferrers(ctx context.Context, rc *request, path string) (referrersAnswer, error) {
	m := rc.mirror
	a := referrersAnswer{fetched: m.now()}
	resp, err := m.client.Do(ctx, http.MethodGet, m.upstreamName(rc.name), path, nil)
	if err != nil {
		return a, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return a, nil
	}
	received, _, err := holdManifestReceive(ctx, resp.ContentLength, h.cfg.MaxManifestSize)
	if err != nil {
		return a, err
	}
	defer received()
	body, err := readManifestBody(resp.Body, resp.ContentLength, h.cfg.MaxManifestSize)
	if err != nil {
		return a, err // cut off midway: temporary
	}
	if int64(len(body)) > h.cfg.MaxManifestSize || !oneJSONObject(body) {
		return a, nil
	}
	a.body, a.filters = body, resp.Header.Get("OCI-Filters-Applied")
	return a, nil
}
