package registry

// Misses: what a mirror does before it asks upstream for content its store
// does not hold. Each such request costs an upstream request, and
// upstreams rate-limit by the mirror's address or account: one caller
// asking for 20,000 made-up names made 20,000 upstream requests, and could
// get the mirror limited for everyone (then every pull waits out the hold
// of registry/upstream). So a mirror
//   - remembers upstream's "not found" for a manifest or blob, per stored
//     name and reference, for NotFoundTTL, and answers it from memory;
//   - gives each client (the signed-in user, else its address, as
//     max_uploads_per_client counts clients) a budget of such requests
//     per minute; past it the client gets 429 and upstream is not asked.
// Content the store holds is served before either is looked at.

import (
	"container/list"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/registry/upstream"
)

// Defaults of the miss bounds.
const (
	// DefaultNotFoundTTL is short: a tag pushed upstream right after a
	// pull missed it must appear soon (a CI job that pushes, then pulls
	// through the mirror, waits at most this long), while a flood of one
	// made-up name costs upstream one request per TTL instead of one per
	// request. Floods of distinct names are the budget's to bound.
	DefaultNotFoundTTL = 30 * time.Second
	// DefaultMissesPerClient is generous: a cold pull of a 30-layer
	// image is about 33 misses (index, manifest, config, layers), so a
	// client pulling several new images at once, or a CI fleet behind
	// one NAT address, stays far below it; a flood is cut to about this
	// many upstream requests a minute.
	DefaultMissesPerClient = 1000
	// notFoundMax bounds the answers a mirror remembers: a key is at
	// most a name (255) and a reference (a digest of 135), so about
	// 5 MiB at worst. The oldest go first.
	notFoundMax = 10000
	// missClientsMax bounds the clients whose budget is tracked (a
	// bucket costs about 100 bytes with its key). Past it, the full ones
	// go (they equal no entry), then arbitrary ones.
	missClientsMax = 1 << 16
)

// notFound remembers upstream's "not found" answers. One TTL for all, so
// the order of insertion is the order of expiry: a list, oldest first,
// beside the map is the whole of its bookkeeping.
type notFound struct {
	ttl   time.Duration // 0: off
	mu    sync.Mutex
	byKey map[string]*list.Element
	order list.List // of *notFoundEntry, oldest first
}

type notFoundEntry struct {
	key   string
	until time.Time
	// status and code are upstream's (404, 401 or 403), which
	// upstreamError turns into the client's answer as it did the first
	// time.
	status int
	code   string
}

// notFoundKey: kind ("manifest", "blob") is part of it, since a digest
// upstream lacks as a blob it may hold as a manifest, and each answers
// with its own code.
func notFoundKey(name, kind, ref string) string { return kind + " " + name + "@" + ref }

// get is the answer remembered for name and ref, or nil.
func (c *notFound) get(name, kind, ref string, now time.Time) *upstream.Error {
	if c.ttl <= 0 {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	el := c.byKey[notFoundKey(name, kind, ref)]
	if el == nil {
		return nil
	}
	e := el.Value.(*notFoundEntry)
	if !now.Before(e.until) {
		c.order.Remove(el)
		delete(c.byKey, e.key)
		return nil
	}
	return &upstream.Error{Status: e.status, Code: e.code, Message: "remembered from an answer less than " + c.ttl.String() + " ago"}
}

// note remembers upstream's answer for name and ref.
func (c *notFound) note(name, kind, ref string, status int, code string, now time.Time) {
	if c.ttl <= 0 {
		return
	}
	key := notFoundKey(name, kind, ref)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byKey == nil {
		c.byKey = make(map[string]*list.Element)
	}
	if el := c.byKey[key]; el != nil {
		c.order.Remove(el)
	}
	for c.order.Len() >= notFoundMax {
		oldest := c.order.Front()
		c.order.Remove(oldest)
		delete(c.byKey, oldest.Value.(*notFoundEntry).key)
	}
	c.byKey[key] = c.order.PushBack(&notFoundEntry{key: key, until: now.Add(c.ttl), status: status, code: code})
}

// forget drops what is remembered for name and ref: upstream has it now.
func (c *notFound) forget(name, kind, ref string) {
	if c.ttl <= 0 {
		return
	}
	key := notFoundKey(name, kind, ref)
	c.mu.Lock()
	defer c.mu.Unlock()
	if el := c.byKey[key]; el != nil {
		c.order.Remove(el)
		delete(c.byKey, key)
	}
}

// noteAnswer is the upstream client's OnAnswer: a manifest or blob
// upstream does not have (for the mirror: 404, or 401/403, which the
// client also gets as 404) is remembered; one it answered is forgotten,
// whoever asked (a pull, a fill, scheduled sync), and so is the digest a
// manifest fetched by tag has, which the store is about to hold.
func (m *Mirror) noteAnswer(repo, path string, resp *http.Response, err error) {
	if m.copy {
		return // a sync_into's source: no pull asks it, nothing to remember
	}
	kind, ref, ok := strings.Cut(path, "/")
	if !ok || (kind != "manifests" && kind != "blobs") || strings.ContainsAny(ref, "/?") {
		return
	}
	name, ok := m.internalName(repo)
	if !ok {
		return
	}
	kind = strings.TrimSuffix(kind, "s") // as upstreamError names it
	var ue *upstream.Error
	switch {
	case err == nil:
		m.notFound.forget(name, kind, ref)
		if d := resp.Header.Get("Docker-Content-Digest"); kind == "manifest" && d != "" && d != ref {
			m.notFound.forget(name, kind, d)
		}
	case errors.As(err, &ue) && (ue.Status == http.StatusNotFound || ue.Status == http.StatusUnauthorized || ue.Status == http.StatusForbidden):
		m.notFound.note(name, kind, ref, ue.Status, ue.Code, m.now())
	}
}

// missBudget is each client's budget of misses: a bucket of perMinute
// that refills evenly over a minute, so a burst of a whole pull passes
// and a flood runs at perMinute. A name is charged once per client per
// missRepeatWindow: a pull asks for each blob twice (HEAD, then GET), and
// twenty CI runners behind one address pulling the same new image ask for
// each blob forty times, nearly all joining the one upstream exchange
// (singleflight, or the fill in progress). A repeat of a name upstream
// does not have is the negative cache's; one it has is then held.
type missBudget struct {
	perMinute int // 0: off
	mu        sync.Mutex
	clients   map[string]*missBucket
	// charged: when each client+name was last charged, by hash, in a
	// ring of fixed size (the oldest is forgotten first).
	charged map[uint64]time.Time
	ring    []uint64
	next    int
	seed    maphash.Seed
}

type missBucket struct {
	left float64
	at   time.Time
}

// missRepeatWindow: see missBudget; as long as the negative cache's
// default, so a made-up name asked again once upstream is asked again
// is charged again.
const (
	missRepeatWindow = DefaultNotFoundTTL
	missRecentMax    = 1 << 16 // names charged remembered, ~2 MiB
)

// recent is the hash of client's key, and whether client was charged for
// it within missRepeatWindow (b.mu held).
func (b *missBudget) recent(client, key string, now time.Time) (uint64, bool) {
	if b.charged == nil {
		b.charged = make(map[uint64]time.Time, missRecentMax)
		b.ring = make([]uint64, missRecentMax)
		b.seed = maphash.MakeSeed()
	}
	var mh maphash.Hash
	mh.SetSeed(b.seed)
	mh.WriteString(client)
	mh.WriteByte(0)
	mh.WriteString(key)
	h := mh.Sum64()
	at, ok := b.charged[h]
	return h, ok && now.Sub(at) < missRepeatWindow
}

// charge records h as charged now, in place of the oldest (b.mu held).
func (b *missBudget) charge(h uint64, now time.Time) {
	if old := b.ring[b.next]; old != h {
		delete(b.charged, old)
	}
	b.ring[b.next] = h
	b.next = (b.next + 1) % len(b.ring)
	b.charged[h] = now
}

// take spends one miss of client's on key (a name and reference; empty:
// an exchange no cache absorbs, charged every time), or says how long
// until it has one.
func (b *missBudget) take(client, key string, now time.Time) (time.Duration, bool) {
	if b.perMinute <= 0 {
		return 0, true
	}
	rate := float64(b.perMinute) / float64(time.Minute) // misses per nanosecond
	b.mu.Lock()
	defer b.mu.Unlock()
	var h uint64
	if key != "" {
		var seen bool
		if h, seen = b.recent(client, key, now); seen {
			return 0, true
		}
	}
	c := b.clients[client]
	if c == nil {
		if b.clients == nil {
			b.clients = make(map[string]*missBucket)
		}
		if len(b.clients) >= missClientsMax {
			b.sweep(now, rate)
		}
		c = &missBucket{left: float64(b.perMinute), at: now}
		b.clients[client] = c
	}
	c.left = math.Min(float64(b.perMinute), c.left+float64(now.Sub(c.at))*rate)
	c.at = now
	if c.left < 1 {
		return time.Duration(math.Ceil((1 - c.left) / rate)), false
	}
	c.left--
	if key != "" {
		b.charge(h, now)
	}
	return 0, true
}

// sweep makes room for new clients: the full buckets go (a full bucket is
// what a client without one gets), then arbitrary ones down to three
// quarters, so a sweep comes once per quarter of the table, not per
// client. A bucket dropped early gives its client a full budget again.
func (b *missBudget) sweep(now time.Time, rate float64) {
	for k, c := range b.clients {
		if c.left+float64(now.Sub(c.at))*rate >= float64(b.perMinute) {
			delete(b.clients, k)
		}
	}
	for k := range b.clients {
		if len(b.clients) < missClientsMax*3/4 {
			break
		}
		delete(b.clients, k)
	}
}

// MissObserver is implemented by a MirrorObserver that also counts the
// requests the miss bounds answered without asking upstream: reason
// "not_found" (remembered) or "budget" (the client's is spent).
type MissObserver interface {
	MirrorMissHeld(registry, reason string)
}

// missHeld tells m's observer, if it wants to know, of a miss answered
// without upstream.
func (m *Mirror) missHeld(reason string) {
	if mo, ok := m.obs.(MissObserver); ok {
		mo.MirrorMissHeld(m.cfg.Prefix, reason)
	}
}

// rememberedNotFound is upstream's "not found" for blob d of repo, if
// remembered, else nil. The exchanges that fetch or confirm a blob ask it
// as they start, after the request's own beforeUpstream: an answer that
// came in between (another request's, for the same name) spares them.
func (m *Mirror) rememberedNotFound(repo, kind string, d cache.Digest) error {
	if ue := m.notFound.get(repo, kind, d.String(), m.now()); ue != nil {
		return ue
	}
	return nil
}

// beforeUpstream is asked before a request for content the store does not
// hold (kind "manifest" or "blob", ref a tag or digest) goes upstream, or
// waits for an identical one on its way there. It answers what upstream
// said of the name less than NotFoundTTL ago, or 429 when the client has
// spent its budget; nil lets the request go on.
func (h *Handler) beforeUpstream(rc *request, kind, ref string) error {
	m := rc.mirror
	if ue := m.notFound.get(rc.name, kind, ref, m.now()); ue != nil {
		m.missHeld("not_found")
		return upstreamError(m, kind, ue)
	}
	return h.spendMiss(rc, notFoundKey(rc.name, kind, ref))
}

// missClient is whose max_misses_per_client budget rc's upstream requests
// spend (keyed as max_uploads_per_client keys its owners); "" when the
// mirror keeps no budget.
func (h *Handler) missClient(rc *request) string {
	if rc.mirror.misses.perMinute <= 0 || rc.caller == nil {
		return ""
	}
	return h.uploadOwner(rc.caller)
}

// spendMiss charges rc's client for an upstream request about what (a
// name and reference, a referrers path; empty: charged every time): nil,
// or 429 when its budget is spent.
func (h *Handler) spendMiss(rc *request, what string) error {
	m := rc.mirror
	client := h.missClient(rc)
	if client == "" {
		return nil
	}
	wait, ok := m.misses.take(client, what, m.now())
	if ok {
		return nil
	}
	m.missHeld("budget")
	retry := max(int64(math.Ceil(wait.Seconds())), 1)
	return newError(http.StatusTooManyRequests, CodeTooManyRequests,
		fmt.Sprintf("too many requests for content mirror %s does not hold (at most %d a minute per client); try again later", m.cfg.Prefix, m.misses.perMinute),
		fmt.Errorf("%s over max_misses_per_client for %s", client, what)).
		withHeader("Retry-After", strconv.FormatInt(retry, 10))
}
