package registry

import (
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/caddy-oci/caddy-oci/cache"
)

// missEnv is a mirror whose clients the tests name by testClient.
func missEnv(t *testing.T, mod ...func(*MirrorConfig)) *mirrorEnv {
	t.Helper()
	env := newMirrorEnv(t, mod...)
	env.h.cfg.ClientIP = func(r *http.Request) string {
		if ip := r.Header.Get(testClient); ip != "" {
			return ip
		}
		return remoteIP(r)
	}
	return env
}

// heldCounter counts the misses answered without upstream, by reason.
type heldCounter struct {
	nopMirrorObserver
	mu   sync.Mutex
	held map[string]int
}

func (c *heldCounter) MirrorMissHeld(_, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held == nil {
		c.held = map[string]int{}
	}
	c.held[reason]++
}

func (c *heldCounter) count(reason string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.held[reason]
}

// forgetNotFound drops every mirror's remembered "not found" answers.
func (env *mirrorEnv) forgetNotFound() {
	for _, m := range env.h.mirrors {
		m.notFound.mu.Lock()
		clear(m.notFound.byKey)
		m.notFound.order.Init()
		m.notFound.mu.Unlock()
	}
}

// pull fetches img's manifest by tag and all its blobs as client does,
// each blob HEAD then GET (containerd's way); it fails on any answer but
// 200.
func (env *mirrorEnv) pull(client, repo, tag string, img v1.Image) {
	env.t.Helper()
	m, err := img.Manifest()
	if err != nil {
		env.t.Fatal(err)
	}
	base := "/v2/docker.io/" + repo
	for _, method := range []string{http.MethodHead, http.MethodGet} {
		if resp := env.do(method, base+"/manifests/"+tag, nil, testClient, client); resp.StatusCode != http.StatusOK {
			env.t.Errorf("%s %s:%s by %s: %d %s", method, repo, tag, client, resp.StatusCode, resp.body)
			return
		}
	}
	blobs := []string{m.Config.Digest.String()}
	for _, l := range m.Layers {
		blobs = append(blobs, l.Digest.String())
	}
	for _, b := range blobs {
		for _, method := range []string{http.MethodHead, http.MethodGet} {
			if resp := env.do(method, base+"/blobs/"+b, nil, testClient, client); resp.StatusCode != http.StatusOK {
				env.t.Errorf("%s blob of %s by %s: %d %s", method, repo, client, resp.StatusCode, resp.body)
				return
			}
		}
	}
}

// madeUp is the i-th made-up name of a flood: a manifest by tag in a
// repository upstream lacks, by digest, or a blob in a real one.
func madeUp(i int) string {
	d := cache.FromBytes(cache.SHA256, []byte(strconv.Itoa(i))).String()
	switch i % 3 {
	case 0:
		return fmt.Sprintf("/v2/docker.io/flood/n%d/manifests/latest", i)
	case 1:
		return "/v2/docker.io/library/app/manifests/" + d
	default:
		return "/v2/docker.io/library/app/blobs/" + d
	}
}

// TestMirrorMissFlood: one client asking for thousands of names the
// mirror does not hold costs upstream no more than its budget; past it
// the client gets 429 with Retry-After and upstream is not asked, while
// content the mirror holds is still served to it, and another client's
// pulls are unaffected.
func TestMirrorMissFlood(t *testing.T) {
	const budget, flood = 100, 2000
	env := missEnv(t, func(c *MirrorConfig) { c.MaxMissesPerClient = budget })
	held := randomImage(t, 1024, 2)
	env.up.pushImage("library/app", "v1", held)
	counter := &heldCounter{}
	env.mirror.obs = counter // before any request: fills report to it after theirs end
	env.pull("10.0.0.1", "library/app", "v1", held)

	before := env.up.total()
	var refused int
	for i := range flood {
		resp := env.do(http.MethodGet, madeUp(i), nil, testClient, "10.0.0.1")
		switch resp.StatusCode {
		case http.StatusNotFound:
		case http.StatusTooManyRequests:
			refused++
			if resp.Header.Get("Retry-After") == "" {
				t.Fatalf("429 without Retry-After: %s", resp.body)
			}
			env.wantError(resp, http.StatusTooManyRequests, CodeTooManyRequests)
		default:
			t.Fatalf("made-up name %d: %d %s", i, resp.StatusCode, resp.body)
		}
	}
	asked := env.up.total() - before
	t.Logf("%d made-up names from one client: %d upstream requests, %d answered 429", flood, asked, refused)
	if asked > budget {
		t.Fatalf("%d made-up names from one client made %d upstream requests; want at most %d", flood, asked, budget)
	}
	if refused < flood-budget {
		t.Fatalf("%d refused, want at least %d", refused, flood-budget)
	}
	if n := counter.count("budget"); n != refused {
		t.Fatalf("metric: %d refusals counted, %d made", n, refused)
	}
	// The same made-up names again: remembered, neither upstream nor the
	// budget asked.
	for i := range 10 {
		env.wantStatus(env.do(http.MethodGet, madeUp(i), nil, testClient, "10.0.0.3"), http.StatusNotFound)
	}
	if n := counter.count("not_found"); n == 0 {
		t.Fatal("metric: no remembered answer counted")
	}

	// Held content is served to the client over its budget, upstream not asked.
	before = env.up.total()
	env.pull("10.0.0.1", "library/app", "v1", held)
	if n := env.up.total() - before; n != 0 {
		t.Fatalf("a pull of held content made %d upstream requests", n)
	}
	// Another client pulls a new image.
	fresh := randomImage(t, 1024, 3)
	env.up.pushImage("library/fresh", "v1", fresh)
	env.pull("10.0.0.2", "library/fresh", "v1", fresh)

	// The budget refills over a minute.
	env.clock.Add(time.Minute)
	env.up.pushImage("library/later", "v1", fresh)
	env.pull("10.0.0.1", "library/later", "v1", fresh)
}

// TestMirrorManyLayerPullsWithinBudget: with the default budget, one
// client pulling five new 30-layer images at once, and a CI fleet of
// twenty runners behind one address pulling them too, never meet it.
func TestMirrorManyLayerPullsWithinBudget(t *testing.T) {
	env := missEnv(t)
	imgs := make([]v1.Image, 5)
	for i := range imgs {
		imgs[i] = randomImage(t, 256, 30)
		env.up.pushImage(fmt.Sprintf("library/big%d", i), "v1", imgs[i])
	}
	var wg sync.WaitGroup
	for i, img := range imgs {
		wg.Go(func() { env.pull("10.0.0.1", fmt.Sprintf("library/big%d", i), "v1", img) })
	}
	wg.Wait()
	more := make([]v1.Image, 5)
	for i := range more {
		more[i] = randomImage(t, 256, 30)
		env.up.pushImage(fmt.Sprintf("library/ci%d", i), "v1", more[i])
	}
	for range 20 {
		for i, img := range more {
			wg.Go(func() { env.pull("192.0.2.1", fmt.Sprintf("library/ci%d", i), "v1", img) })
		}
	}
	wg.Wait()
}

// TestMirrorNotFoundRemembered: upstream's "not found" is answered from
// memory for NotFoundTTL, then asked again; a name pushed upstream
// meanwhile is served once it passes.
func TestMirrorNotFoundRemembered(t *testing.T) {
	env := missEnv(t)
	img := randomImage(t, 1024, 1)
	dg, _ := img.Digest()
	layer, _ := layerOf(t, img)
	paths := map[string]string{
		"tag":    "/v2/docker.io/library/app/manifests/v1",
		"digest": "/v2/docker.io/library/app/manifests/" + dg.String(),
		"blob":   "/v2/docker.io/library/app/blobs/" + layer,
	}
	for what, p := range paths {
		before := env.up.total()
		for i := range 50 {
			method := http.MethodGet
			if i%2 == 1 {
				method = http.MethodHead
			}
			// Each from another client: no budget is met.
			resp := env.do(method, p, nil, testClient, fmt.Sprintf("10.1.0.%d", i))
			env.wantStatus(resp, http.StatusNotFound)
		}
		if n := env.up.total() - before; n != 1 {
			t.Errorf("%s: 50 requests of a missing name made %d upstream requests, want 1", what, n)
		}
	}
	env.up.pushImage("library/app", "v1", img)
	env.clock.Add(DefaultNotFoundTTL / 2)
	for _, p := range paths {
		env.wantStatus(env.do(http.MethodGet, p, nil), http.StatusNotFound)
	}
	env.clock.Add(DefaultNotFoundTTL / 2)
	for _, p := range paths {
		env.wantStatus(env.do(http.MethodGet, p, nil), http.StatusOK)
	}

	// A manifest fetched by tag forgets its digest's "not found": the
	// store holds it now.
	img2 := randomImage(t, 1024, 1)
	dg2, _ := img2.Digest()
	env.wantStatus(env.do(http.MethodGet, "/v2/docker.io/library/app/manifests/"+dg2.String(), nil), http.StatusNotFound)
	env.up.pushImage("library/app", "v2", img2)
	env.wantStatus(env.do(http.MethodGet, "/v2/docker.io/library/app/manifests/v2", nil), http.StatusOK)
	env.wantStatus(env.do(http.MethodGet, "/v2/docker.io/library/app/manifests/"+dg2.String(), nil), http.StatusOK)
}

// TestMirrorNotFoundOff: not_found_ttl off asks upstream every time.
func TestMirrorNotFoundOff(t *testing.T) {
	env := missEnv(t, func(c *MirrorConfig) { c.NotFoundTTL = -1; c.MaxMissesPerClient = -1 })
	before := env.up.total()
	for range 20 {
		env.wantStatus(env.do(http.MethodGet, "/v2/docker.io/library/nope/manifests/v1", nil), http.StatusNotFound)
	}
	if n := env.up.total() - before; n != 20 {
		t.Fatalf("%d upstream requests, want 20", n)
	}
}

// TestMirrorMissesCoalesce: many clients asking for one missing name at
// once cost upstream one request, whichever way they ask.
func TestMirrorMissesCoalesce(t *testing.T) {
	env := missEnv(t)
	d := cache.FromBytes(cache.SHA256, []byte("absent")).String()
	for _, p := range []string{
		"/v2/docker.io/library/gone/manifests/latest",
		"/v2/docker.io/library/gone/manifests/" + d,
		"/v2/docker.io/library/gone/blobs/" + d,
	} {
		before := env.up.total()
		var wg sync.WaitGroup
		for i := range 64 {
			wg.Go(func() {
				method := http.MethodGet
				if i%4 == 3 {
					method = http.MethodHead
				}
				if resp := env.do(method, p, nil, testClient, fmt.Sprintf("10.2.0.%d", i)); resp.StatusCode != http.StatusNotFound {
					t.Errorf("%s: %d", p, resp.StatusCode)
				}
			})
		}
		wg.Wait()
		if n := env.up.total() - before; n > 2 {
			t.Errorf("%s: 64 requests at once made %d upstream requests, want at most 2 (a GET and a HEAD)", p, n)
		}
	}
}

// TestMirrorMissBudgetTagsAndReferrers: tag lists (never kept, so each
// asks upstream) and referrers nothing was kept for count against the
// budget too, repeats of one tag list included.
func TestMirrorMissBudgetTagsAndReferrers(t *testing.T) {
	const budget = 10
	env := missEnv(t, func(c *MirrorConfig) { c.MaxMissesPerClient = budget })
	before := env.up.total()
	var refused int
	for i := range 60 {
		var p string
		switch i % 3 {
		case 0:
			p = "/v2/docker.io/library/app/tags/list"
		case 1:
			p = fmt.Sprintf("/v2/docker.io/flood/t%d/tags/list", i)
		default:
			p = "/v2/docker.io/library/app/referrers/" + cache.FromBytes(cache.SHA256, []byte(strconv.Itoa(i))).String()
		}
		if resp := env.do(http.MethodGet, p, nil, testClient, "10.3.0.1"); resp.StatusCode == http.StatusTooManyRequests {
			refused++
			if resp.Header.Get("Retry-After") == "" {
				t.Fatal("429 without Retry-After")
			}
		}
	}
	if n := env.up.total() - before; n > budget {
		t.Fatalf("60 tag lists and referrers from one client made %d upstream requests; want at most %d", n, budget)
	}
	if refused < 60-budget {
		t.Fatalf("%d refused", refused)
	}
	// Another client is unaffected.
	env.wantStatus(env.do(http.MethodGet, "/v2/docker.io/library/app/tags/list", nil, testClient, "10.3.0.2"), http.StatusNotFound)
}

// TestMirrorNotFoundKinds: a digest upstream lacks as a blob is not
// thereby unknown as a manifest; each answers with its own code.
func TestMirrorNotFoundKinds(t *testing.T) {
	env := missEnv(t)
	img := randomImage(t, 1024, 1)
	env.up.pushImage("library/app", "v1", img)
	dg, _ := img.Digest()
	env.wantError(env.do(http.MethodGet, "/v2/docker.io/library/app/blobs/"+dg.String(), nil), http.StatusNotFound, CodeBlobUnknown)
	env.wantStatus(env.do(http.MethodGet, "/v2/docker.io/library/app/manifests/"+dg.String(), nil), http.StatusOK)
	d := cache.FromBytes(cache.SHA256, []byte("nothing")).String()
	env.wantError(env.do(http.MethodGet, "/v2/docker.io/library/app/blobs/"+d, nil), http.StatusNotFound, CodeBlobUnknown)
	env.wantError(env.do(http.MethodGet, "/v2/docker.io/library/app/manifests/"+d, nil), http.StatusNotFound, CodeManifestUnknown)
	env.wantError(env.do(http.MethodGet, "/v2/docker.io/library/app/blobs/"+d, nil), http.StatusNotFound, CodeBlobUnknown)
}
