package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/caddy-oci/caddy-oci/cache"
)

// TestMirrorKilledAfterColdAnswers: the mirror answers a cold manifest
// before its store write ends. Killed (SIGKILL) right after answering
// many at once, the store it leaves behind may lack some of them (they
// are fetched again), but every tag it holds has its manifest, whole and
// with upstream's digest; restarted, it serves them all.
func TestMirrorKilledAfterColdAnswers(t *testing.T) {
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	upstream := httptest.NewServer(reg)
	defer upstream.Close()
	host := strings.TrimPrefix(upstream.URL, "http://")
	const n = 24
	want := map[string]string{}
	for i := range n {
		img, err := random.Image(512, 1)
		if err != nil {
			t.Fatal(err)
		}
		tag := fmt.Sprintf("t%d", i)
		writeImage(t, host+"/library/app:"+tag, img)
		d, _ := img.Digest()
		want[tag] = d.String()
	}

	s := mirrorServer(t, upstream.URL)
	var wg sync.WaitGroup
	var mu sync.Mutex
	answered := 0
	for tag, d := range want {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodGet, s.url("/v2/docker.io/library/app/manifests/"+tag), nil)
			req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Errorf("%s: %v", tag, err)
				return
			}
			defer resp.Body.Close()
			_, _ = io.Copy(io.Discard, resp.Body)
			if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != d {
				t.Errorf("%s: %d %s, want 200 %s", tag, resp.StatusCode, resp.Header.Get("Docker-Content-Digest"), d)
				return
			}
			mu.Lock()
			answered++
			mu.Unlock()
		}()
	}
	wg.Wait()
	s.kill() // at once: some store writes may still run
	if answered != n {
		t.Fatalf("%d of %d cold pulls answered", answered, n)
	}

	st, err := cache.Open(cache.Options{Dir: s.dataDir})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	stored := 0
	for tag, d := range want {
		ti, err := st.TagInfo(ctx, "docker.io/library/app", tag)
		if errors.Is(err, cache.ErrTagUnknown) || errors.Is(err, cache.ErrRepoUnknown) {
			continue // lost with the process: fetched again
		}
		if err != nil {
			t.Fatalf("%s: %v", tag, err)
		}
		if ti.Digest.String() != d {
			t.Errorf("%s: stored as %s, upstream has %s", tag, ti.Digest, d)
		}
		_, body, err := st.GetManifest(ctx, "docker.io/library/app", ti.Digest)
		if err != nil {
			t.Errorf("%s: the tag survived the kill without its manifest: %v", tag, err)
			continue
		}
		if got := cache.FromBytes(ti.Digest.Algorithm, body); got != ti.Digest {
			t.Errorf("%s: stored bytes hash to %s, not %s", tag, got, ti.Digest)
		}
		stored++
	}
	t.Logf("%d of %d answered manifests were in the store after the kill", stored, n)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	s.start()
	for tag, d := range want {
		resp := do(t, http.MethodGet, s.url("/v2/docker.io/library/app/manifests/"+tag), nil,
			map[string]string{"Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"})
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != d {
			t.Errorf("%s after the restart: %d %s", tag, resp.StatusCode, resp.Header.Get("Docker-Content-Digest"))
		}
	}
}
