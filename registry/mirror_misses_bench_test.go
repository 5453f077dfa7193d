package registry

import (
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"
)

// BenchmarkMirrorHeldContent is the hot path the miss bounds must not
// slow: GETs of a manifest by digest and of a blob the mirror holds,
// over real HTTP on loopback. Reports ns per request.
func BenchmarkMirrorHeldContent(b *testing.B) {
	env := newMirrorEnv(b)
	img := randomImage(b, 4096, 1)
	env.up.pushImage("library/bench", "v1", img)
	dg, _ := img.Digest()
	layer, _ := layerOf(b, img)
	c := env.srv.Client()
	urls := []string{
		env.srv.URL + "/v2/docker.io/library/bench/manifests/" + dg.String(),
		env.srv.URL + "/v2/docker.io/library/bench/blobs/" + layer,
	}
	get := func(u string) {
		resp, err := c.Get(u)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	for _, u := range urls {
		get(u)
	}
	before := env.up.total()
	i := 0
	for b.Loop() {
		get(urls[i%2])
		i++
	}
	if n := env.up.total() - before; n != 0 {
		b.Fatalf("held content made %d upstream requests", n)
	}
}

// BenchmarkMissBudgetTake is what a miss pays for its budget: one bucket
// and the repeat check, across many clients and names.
func BenchmarkMissBudgetTake(b *testing.B) {
	mb := missBudget{perMinute: 1 << 30}
	now := time.Now()
	i := 0
	for b.Loop() {
		mb.take("ip:10.0.0."+strconv.Itoa(i%256), "docker.io/library/x@sha256:"+strconv.Itoa(i), now)
		i++
	}
}
