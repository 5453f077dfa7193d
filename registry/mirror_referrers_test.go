package registry

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// referrersUpstream answers referrers GETs with index (or status, when
// set) and counts them.
type referrersUpstream struct {
	asked  atomic.Int64
	status atomic.Int64 // 0: answer index
	index  []byte
}

func (u *referrersUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !strings.Contains(r.URL.Path, "/referrers/") {
		http.NotFound(w, r)
		return
	}
	u.asked.Add(1)
	if s := u.status.Load(); s != 0 {
		writeUpstreamError(w, int(s), "UNAVAILABLE", "status set by the test")
		return
	}
	w.Header().Set("OCI-Filters-Applied", "artifactType")
	manifestAnswer{contentType: MediaTypeOCIIndex, body: u.index}.serve(w, r)
}

// TestMirrorReferrersKept: upstream's referrers index is asked once per
// tag_ttl, however many clients (at once or in turn) ask for it, then
// asked again; while upstream fails, the index kept is served with a
// Warning within stale_if_error, and the store's list past it.
func TestMirrorReferrersKept(t *testing.T) {
	up := &referrersUpstream{index: []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` +
		`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:` + strings.Repeat("d", 64) + `","size":10,"artifactType":"application/example"}]}`)}
	env, _ := newHostileEnv(t, up, func(c *MirrorConfig) {
		c.TagTTL = time.Minute
		c.StaleIfError = time.Hour
		c.MaxRetries = -1
	})
	p := "/v2/library/app/referrers/" + digestOf(goodManifest) + "?artifactType=application%2Fexample"
	get := func() response {
		t.Helper()
		resp := env.do(http.MethodGet, p, nil)
		env.wantStatus(resp, http.StatusOK)
		return resp
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := env.do(http.MethodGet, p, nil)
			if resp.StatusCode != http.StatusOK || !bytes.Equal(resp.body, up.index) {
				t.Errorf("concurrent GET: %s %q", resp.Status, resp.body)
			}
		}()
	}
	wg.Wait()
	for range 5 {
		if resp := get(); !bytes.Equal(resp.body, up.index) || resp.Header.Get("OCI-Filters-Applied") != "artifactType" {
			t.Fatalf("GET: %q, filters %q", resp.body, resp.Header.Get("OCI-Filters-Applied"))
		}
	}
	if n := up.asked.Load(); n != 1 {
		t.Fatalf("13 GETs within tag_ttl asked upstream %d times, want 1", n)
	}
	// Another artifactType is another question.
	env.wantStatus(env.do(http.MethodGet, "/v2/library/app/referrers/"+digestOf(goodManifest), nil), http.StatusOK)
	if n := up.asked.Load(); n != 2 {
		t.Fatalf("upstream asked %d times, want 2 (a GET without the filter)", n)
	}

	env.clock.Add(time.Minute + time.Second)
	get()
	if n := up.asked.Load(); n != 3 {
		t.Fatalf("past tag_ttl upstream was asked %d times in all, want 3", n)
	}

	up.status.Store(http.StatusServiceUnavailable)
	env.clock.Add(time.Minute + time.Second)
	resp := get()
	if !bytes.Equal(resp.body, up.index) || resp.Header.Get("Warning") == "" {
		t.Fatalf("upstream failing within stale_if_error: %q, Warning %q; want the index kept, stale", resp.body, resp.Header.Get("Warning"))
	}
	env.clock.Add(2 * time.Hour)
	resp = get()
	if bytes.Equal(resp.body, up.index) || resp.Header.Get("Warning") != "" {
		t.Fatalf("upstream failing past stale_if_error: %q, Warning %q; want the store's list", resp.body, resp.Header.Get("Warning"))
	}

	// An upstream without the API: the store's list, and the refusal is
	// kept for tag_ttl as an answer would be.
	up.status.Store(http.StatusNotFound)
	env.clock.Add(2 * time.Minute)
	asked := up.asked.Load()
	for range 3 {
		if resp := get(); bytes.Equal(resp.body, up.index) {
			t.Fatal("upstream answers 404, yet its old index is served")
		}
	}
	if n := up.asked.Load() - asked; n != 1 {
		t.Fatalf("3 GETs of a list upstream refused asked it %d times, want 1", n)
	}
}

// TestReferrersCacheBounded: the copies never hold more than their budget,
// the least recently used go first, and an index over the entry bound is
// not kept.
func TestReferrersCacheBounded(t *testing.T) {
	var c referrersCache
	body := bytes.Repeat([]byte("x"), 64<<10)
	for i := range 1000 {
		c.put(strings.Repeat("k", 10)+string(rune('a'+i%26))+strings.Repeat("z", i), referrersAnswer{body: body})
		if c.bytes > referrersCacheBytes {
			t.Fatalf("after %d entries: %d bytes kept, bound %d", i+1, c.bytes, referrersCacheBytes)
		}
	}
	var sum int64
	for e := c.order.Front(); e != nil; e = e.Next() {
		re := e.Value.(*referrersEntry)
		sum += entryCost(re.key, re.a)
	}
	if sum != c.bytes || len(c.byKey) != c.order.Len() {
		t.Fatalf("bookkeeping: %d bytes counted, %d held; %d keys, %d in order", c.bytes, sum, len(c.byKey), c.order.Len())
	}
	c.put("used", referrersAnswer{body: []byte("{}")})
	for i := range 400 {
		c.get("used")
		c.put("new"+strings.Repeat("n", i), referrersAnswer{body: body})
	}
	if _, ok := c.get("used"); !ok {
		t.Fatal("an entry read all along was dropped before ones never read")
	}
	c.put("huge", referrersAnswer{body: make([]byte, referrersEntryMax+1)})
	if _, ok := c.get("huge"); ok {
		t.Fatal("an index over referrersEntryMax was kept")
	}
}

// TestReferrersCacheCountsFilters: what upstream sends in
// OCI-Filters-Applied is kept with the index, so it counts against the
// copies' budget as the body does. Copies with megabytes of it and small
// indexes held many times the budget when only bodies counted. (The
// upstream client now refuses answers with more than 64 KiB of headers,
// so the copies' own count is what is tested here.)
func TestReferrersCacheCountsFilters(t *testing.T) {
	filters := strings.Repeat("artifactType,", (2<<20)/len("artifactType,"))
	index := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`)
	var c referrersCache
	for i := range 16 {
		c.put(fmt.Sprintf("library/app/referrers/%d", i), referrersAnswer{body: index, filters: filters})
	}
	var held int64
	for e := c.order.Front(); e != nil; e = e.Next() {
		re := e.Value.(*referrersEntry)
		held += int64(len(re.key) + len(re.a.body) + len(re.a.filters))
	}
	if held > referrersCacheBytes {
		t.Fatalf("the copies hold %d bytes of keys, bodies and filters; budget %d", held, referrersCacheBytes)
	}
}
