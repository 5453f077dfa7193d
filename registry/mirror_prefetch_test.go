package registry

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/caddy-oci/caddy-oci/cache"
)

// imageBlobs returns img's config and layer digests, config first.
func imageBlobs(t *testing.T, img v1.Image) []string {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	out := []string{m.Config.Digest.String()}
	for _, l := range m.Layers {
		out = append(out, l.Digest.String())
	}
	return out
}

// A cold manifest GET starts the fills of the image's config and layers
// before the client asks for them; the client's blob GETs are then served
// from those fills, each blob fetched from upstream once and never HEADed.
func TestMirrorPrefetch(t *testing.T) {
	env := newMirrorEnv(t, func(c *MirrorConfig) { c.Prefetch = true })
	img := randomImage(t, 256<<10, 5)
	env.up.pushImage("library/app", "v1", img)
	blobs := imageBlobs(t, img)

	env.wantStatus(env.do(http.MethodGet, "/v2/docker.io/library/app/manifests/v1", nil), http.StatusOK)
	waitFor(t, "every blob linked in docker.io/library/app", func() bool {
		for _, b := range blobs {
			d, _ := cache.ParseDigest(b)
			if _, err := env.store.HasBlob(t.Context(), "docker.io/library/app", d); err != nil {
				return false
			}
		}
		return true
	})
	if n := env.up.count("GET blobs"); n != len(blobs) {
		t.Fatalf("upstream blob GETs after the manifest = %d, want %d (config and layers)", n, len(blobs))
	}

	ls, _ := img.Layers()
	for i, l := range ls {
		d, _ := l.Digest()
		rc, _ := l.Compressed()
		want, _ := io.ReadAll(rc)
		rc.Close()
		got := env.do(http.MethodGet, "/v2/docker.io/library/app/blobs/"+d.String(), nil)
		env.wantStatus(got, http.StatusOK)
		if !bytes.Equal(got.body, want) {
			t.Fatalf("layer %d differs", i)
		}
	}
	if n, h := env.up.count("GET blobs"), env.up.count("HEAD blobs"); n != len(blobs) || h != 0 {
		t.Fatalf("upstream blob GETs = %d, HEADs = %d after the pull; want %d and 0", n, h, len(blobs))
	}
}

// What starts no prefetch: a mirror without the setting, a HEAD, an
// index (its platform's manifest does, once asked for), a manifest the
// store already held. Each is checked after the prefetch of a control
// image on the same mirror ended, so a prefetch started by mistake has
// had the time to show.
func TestMirrorPrefetchNot(t *testing.T) {
	idx, err := random.Index(1024, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		prefetch bool
		do       func(env *mirrorEnv)
	}{
		{"off", false, func(env *mirrorEnv) {
			env.wantStatus(env.do(http.MethodGet, "/v2/docker.io/library/app/manifests/v1", nil), http.StatusOK)
		}},
		{"HEAD", true, func(env *mirrorEnv) {
			env.wantStatus(env.do(http.MethodHead, "/v2/docker.io/library/app/manifests/v1", nil), http.StatusOK)
		}},
		{"index", true, func(env *mirrorEnv) {
			env.wantStatus(env.do(http.MethodGet, "/v2/docker.io/library/multi/manifests/v1", nil), http.StatusOK)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newMirrorEnv(t, func(c *MirrorConfig) { c.Prefetch = tc.prefetch })
			env.up.pushImage("library/app", "v1", randomImage(t, 1024, 3))
			env.up.pushIndex("library/multi", "v1", idx)
			tc.do(env)
			// A control: a cold GET whose prefetch (if on) runs to its end.
			control := randomImage(t, 1024, 2)
			env.up.pushImage("library/control", "v1", control)
			env.wantStatus(env.do(http.MethodGet, "/v2/docker.io/library/control/manifests/v1", nil), http.StatusOK)
			want := 0
			if tc.prefetch {
				want = len(imageBlobs(t, control))
				waitFor(t, "the control image's prefetch", func() bool { return env.up.count("GET blobs") >= want })
			}
			time.Sleep(100 * time.Millisecond)
			if n := env.up.count("GET blobs"); n != want {
				t.Fatalf("upstream blob GETs = %d, want %d (the control's prefetch only)", n, want)
			}
		})
	}
}

// A prefetch keeps half of the mirror's fill slots for clients: with 4
// slots and upstream holding every blob, it starts two fills and stops;
// a client's GET of another layer still gets a slot at once, and a GET of
// a prefetched layer joins its fill.
func TestMirrorPrefetchSpareSlots(t *testing.T) {
	env := newMirrorEnv(t, func(c *MirrorConfig) {
		c.Prefetch = true
		c.MaxConcurrentFills = 4
		c.FillSlotWait = 50 * time.Millisecond
	})
	img := randomImage(t, 512<<10, 6)
	env.up.pushImage("library/app", "v1", img)
	blobs := imageBlobs(t, img)
	gate := make(chan struct{})
	env.up.set(func(u *fakeUpstream) { u.gate = gate })
	openGate := sync.OnceFunc(func() { close(gate) })
	t.Cleanup(openGate)

	env.wantStatus(env.do(http.MethodGet, "/v2/docker.io/library/app/manifests/v1", nil), http.StatusOK)
	waitFor(t, "two prefetch fills", func() bool { return env.up.count("GET blobs") >= 2 })
	waitFor(t, "the prefetch's end", func() bool {
		_, running := env.mirror.prefetching.Load("docker.io/library/app@" + manifestDigest(t, img))
		return !running
	})
	if n := env.up.count("GET blobs"); n != 2 {
		t.Fatalf("upstream blob GETs with 4 slots = %d, want 2 (half kept for clients)", n)
	}

	// A client's GET of a layer not prefetched takes a slot of its own,
	// and one of a prefetched layer joins its fill (no request upstream).
	var bodies []io.ReadCloser
	for _, b := range []string{blobs[4], blobs[1]} {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		resp, err := env.get(ctx, "/v2/docker.io/library/app/blobs/"+b)
		if err != nil {
			t.Fatalf("client GET of %s beside the prefetch: %v (upstream: %q)", b, err, env.up.requests())
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("client GET of %s beside the prefetch: %d", b, resp.StatusCode)
		}
		bodies = append(bodies, resp.Body)
	}
	if n, h := env.up.count("GET blobs"), env.up.count("HEAD blobs"); n != 3 || h != 0 {
		t.Fatalf("upstream blob GETs = %d, HEADs = %d; want 3 and 0", n, h)
	}
	openGate()
	for i, body := range bodies {
		data, err := io.ReadAll(body)
		if err != nil {
			t.Fatal(err)
		}
		if d := cache.FromBytes(cache.SHA256, data).String(); !slices.Contains(blobs, d) {
			t.Fatalf("client GET %d: bytes hash to %s, not a blob of the image", i, d)
		}
	}
}

func manifestDigest(t *testing.T, img v1.Image) string {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

func TestPrefetchBlobs(t *testing.T) {
	const (
		a = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
		b = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
		c = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"
	)
	for _, tc := range []struct {
		name    string
		body    string
		maxBlob int64
		want    []string
	}{
		{"config first, then layers", `{"config":{"digest":"` + a + `","size":2},"layers":[{"digest":"` + b + `","size":3},{"digest":"` + c + `","size":4}]}`, 0, []string{a, b, c}},
		{"each once", `{"config":{"digest":"` + a + `","size":2},"layers":[{"digest":"` + b + `","size":3},{"digest":"` + b + `","size":3}]}`, 0, []string{a, b}},
		{"over the limit left out", `{"config":{"digest":"` + a + `","size":2},"layers":[{"digest":"` + b + `","size":300}]}`, 100, []string{a}},
		{"foreign layer left out", `{"config":{"digest":"` + a + `","size":2},"layers":[{"digest":"` + b + `","size":3,"urls":["https://example.test/l"]}]}`, 0, []string{a}},
		{"bad digest and negative size left out", `{"config":{"digest":"` + a + `","size":2},"layers":[{"digest":"sha256:xyz","size":3},{"digest":"` + c + `","size":-1}]}`, 0, []string{a}},
		{"index", `{"manifests":[{"digest":"` + a + `","size":2}]}`, 0, nil},
		{"no config", `{"layers":[{"digest":"` + b + `","size":3}]}`, 0, nil},
		{"not JSON", `{"config":`, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, d := range prefetchBlobs([]byte(tc.body), tc.maxBlob) {
				got = append(got, d.String())
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("prefetchBlobs = %v, want %v", got, tc.want)
			}
		})
	}
}

// A prefetch starts nothing once the handler drains (a reload or a stop
// closes its store next): of an image of 13 blobs, the config (one chunk,
// which upstream does not hold) and the first prefetchParallel layers,
// held by upstream, have been asked for when Drain comes; the rest never
// are.
func TestMirrorPrefetchStopsOnDrain(t *testing.T) {
	env := newMirrorEnv(t, func(c *MirrorConfig) { c.Prefetch = true })
	img := randomImage(t, 256<<10, 12)
	env.up.pushImage("library/app", "v1", img)
	gate := make(chan struct{})
	env.up.set(func(u *fakeUpstream) { u.gate = gate })
	openGate := sync.OnceFunc(func() { close(gate) })
	t.Cleanup(openGate)

	env.wantStatus(env.do(http.MethodGet, "/v2/docker.io/library/app/manifests/v1", nil), http.StatusOK)
	waitFor(t, "the prefetch's first fills", func() bool { return env.up.count("GET blobs") >= prefetchParallel+1 })
	if err := env.h.Drain(t.Context()); err != nil {
		t.Fatal(err)
	}
	openGate()
	waitFor(t, "the prefetch's end", func() bool {
		_, running := env.mirror.prefetching.Load("docker.io/library/app@" + manifestDigest(t, img))
		return !running
	})
	if n := env.up.count("GET blobs"); n != prefetchParallel+1 {
		t.Fatalf("upstream blob GETs = %d after Drain, want %d (those started before)", n, prefetchParallel+1)
	}
}

// TestMirrorPrefetchWithinBudget: the fills a prefetch starts are requests
// upstream that the client's manifest GET caused, so they are charged to
// its max_misses_per_client as its own blob GETs would be, and the
// prefetch stops where the budget ends. Before, against the built binary,
// one anonymous GET of a 500-layer manifest (max_misses_per_client 10)
// made the mirror send 501 blob GETs upstream; here 40 layers with a
// budget of 10 made 41.
func TestMirrorPrefetchWithinBudget(t *testing.T) {
	const budget = 10
	env := missEnv(t, func(c *MirrorConfig) {
		c.Prefetch = true
		c.MaxMissesPerClient = budget
	})
	img := randomImage(t, 64, 40)
	env.up.pushImage("library/app", "v1", img)
	blobs := imageBlobs(t, img)

	before := env.up.total()
	env.wantStatus(env.do(http.MethodGet, "/v2/docker.io/library/app/manifests/v1", nil, testClient, "10.0.0.1"), http.StatusOK)
	waitFor(t, "the prefetch's end", func() bool {
		_, running := env.mirror.prefetching.Load("docker.io/library/app@" + manifestDigest(t, img))
		return !running
	})
	waitFor(t, "the prefetch's fills' end", func() bool {
		for _, b := range blobs {
			d, _ := cache.ParseDigest(b)
			if env.store.Filling(t.Context(), d) != nil {
				return false
			}
		}
		return true
	})
	if asked := env.up.total() - before; asked > budget {
		t.Fatalf("one manifest GET with a budget of %d made %d upstream requests (%d blob GETs)", budget, asked, env.up.count("GET blobs"))
	}
	// Another client's budget is its own: its GET of the last blob, which
	// no prefetch fetched, goes upstream.
	env.wantStatus(env.do(http.MethodGet, "/v2/docker.io/library/app/blobs/"+blobs[len(blobs)-1], nil, testClient, "10.0.0.2"), http.StatusOK)
}
