package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/authscope"
)

// timedGet GETs url and returns the time to the first body byte and to
// the end, and the bytes read.
func timedGet(b *testing.B, c *http.Client, url string) (ttfb, total time.Duration, n int64) {
	start := time.Now()
	resp, err := c.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b.Fatalf("GET %s: %d", url, resp.StatusCode)
	}
	one := make([]byte, 1)
	if _, err := io.ReadFull(resp.Body, one); err != nil {
		b.Fatal(err)
	}
	ttfb = time.Since(start)
	rest, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		b.Fatal(err)
	}
	return ttfb, time.Since(start), rest + 1
}

// BenchmarkMirrorColdPull pulls a cold 8 MiB blob through the mirror from
// an upstream that sends 64 KiB every millisecond (~64 MB/s), and the same
// blob straight from that upstream, and reports both.
func BenchmarkMirrorColdPull(b *testing.B) {
	env := newMirrorEnv(b)
	env.up.set(func(u *fakeUpstream) { u.delay = time.Millisecond })
	var mTTFB, mTotal, dTTFB, dTotal time.Duration
	var size int64
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		img := randomImage(b, 8<<20, 1)
		env.up.pushImage("library/bench", "v1", img)
		layer, data := layerOf(b, img)
		size = int64(len(data))
		b.StartTimer()
		t1, t2, n := timedGet(b, env.srv.Client(), env.srv.URL+"/v2/docker.io/library/bench/blobs/"+layer)
		if n != size {
			b.Fatalf("mirror sent %d of %d", n, size)
		}
		mTTFB += t1
		mTotal += t2
		b.StopTimer()
		t1, t2, _ = timedGet(b, env.up.srv.Client(), env.up.srv.URL+"/v2/library/bench/blobs/"+layer)
		dTTFB += t1
		dTotal += t2
		b.StartTimer()
	}
	n := float64(b.N)
	b.SetBytes(size)
	b.ReportMetric(float64(mTTFB.Microseconds())/n/1000, "mirror-ttfb-ms")
	b.ReportMetric(float64(mTotal.Microseconds())/n/1000, "mirror-total-ms")
	b.ReportMetric(float64(dTTFB.Microseconds())/n/1000, "direct-ttfb-ms")
	b.ReportMetric(float64(dTotal.Microseconds())/n/1000, "direct-total-ms")
	b.ReportMetric(float64(mTotal)/float64(dTotal), "total/direct")
}

// BenchmarkMirrorConcurrentCold: 8 clients pull one cold 4 MiB blob at
// once; reports upstream bytes fetched / blob size (target 1.00).
func BenchmarkMirrorConcurrentCold(b *testing.B) {
	env := newMirrorEnv(b)
	env.up.set(func(u *fakeUpstream) { u.delay = 200 * time.Microsecond })
	var sent, want int64
	for b.Loop() {
		b.StopTimer()
		img := randomImage(b, 4<<20, 1)
		env.up.pushImage("library/bench", "v1", img)
		layer, data := layerOf(b, img)
		before := env.up.bytesSent()
		b.StartTimer()
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := env.get(context.Background(), "/v2/docker.io/library/bench/blobs/"+layer)
				if err != nil {
					b.Error(err)
					return
				}
				n, _ := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if n != int64(len(data)) {
					b.Errorf("client got %d of %d", n, len(data))
				}
			}()
		}
		wg.Wait()
		sent += env.up.bytesSent() - before
		want += int64(len(data))
		b.SetBytes(int64(len(data)) * 8)
	}
	b.ReportMetric(float64(sent)/float64(want), "upstream-bytes/blob")
}

// BenchmarkMirrorWarmTags: 2,000 pulls of a tag inside its TTL; reports
// the upstream requests they caused (target 0) and their rate.
func BenchmarkMirrorWarmTags(b *testing.B) {
	env := newMirrorEnv(b)
	img := randomImage(b, 1024, 1)
	env.up.pushImage("library/bench", "v1", img)
	url := env.srv.URL + "/v2/library/bench/manifests/v1"
	c := env.srv.Client()
	get := func() {
		resp, err := c.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	get()
	before := env.up.total()
	start := time.Now()
	pulls := 0
	for b.Loop() {
		for range 2000 {
			get()
		}
		pulls += 2000
	}
	el := time.Since(start)
	b.ReportMetric(float64(env.up.total()-before)/float64(b.N), "upstream-req/2000-pulls")
	b.ReportMetric(float64(pulls)/el.Seconds(), "pulls/s")
}

// BenchmarkMirrorColdFirstByte times a cold blob's first body byte: from
// the client's GET of the blob to its first byte, through the mirror and
// straight from the same upstream, in a repository neither the mirror
// nor the client has talked to before (no token, no store copy: the worst
// case; a pull that fetched the manifest first has the token already).
// Every upstream answer, the token service's included, waits rtt (2 ms,
// a registry next door; 10 ms, one in the same region), so what is
// measured is mostly the round trips each path makes, plus the mirror's
// own fixed cost. With tokens, the direct client does the Docker dance
// itself (GET, 401, token, GET), as any client of that upstream must.
// ratio is mirror / direct over the run (target <= 1.5).
func BenchmarkMirrorColdFirstByte(b *testing.B) {
	for _, rtt := range []time.Duration{2 * time.Millisecond, 10 * time.Millisecond} {
		for _, tokens := range []bool{false, true} {
			name := fmt.Sprintf("rtt=%v/anonymous", rtt)
			if tokens {
				name = fmt.Sprintf("rtt=%v/token", rtt)
			}
			b.Run(name, func(b *testing.B) { benchColdFirstByte(b, rtt, tokens) })
		}
	}
}

func benchColdFirstByte(b *testing.B, rtt time.Duration, tokens bool) {
	env := newMirrorEnv(b)
	env.up.set(func(u *fakeUpstream) { u.rtt, u.tokens, u.tokenTTL = rtt, tokens, 300 })
	direct := &http.Client{Transport: &http.Transport{}}
	defer direct.CloseIdleConnections()
	var mirror, straight time.Duration
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		repo := fmt.Sprintf("library/cold%d", i)
		img := randomImage(b, 1<<20, 1)
		env.up.pushImage(repo, "v1", img)
		layer, _ := layerOf(b, img)
		b.StartTimer()
		ttfb, _, _ := timedGet(b, env.srv.Client(), env.srv.URL+"/v2/docker.io/"+repo+"/blobs/"+layer)
		mirror += ttfb
		b.StopTimer()
		img = randomImage(b, 1<<20, 1)
		env.up.pushImage(repo+"-direct", "v1", img)
		layer, _ = layerOf(b, img)
		straight += directFirstByte(b, direct, env.up.srv.URL, repo+"-direct", layer)
		b.StartTimer()
	}
	n := float64(b.N)
	b.ReportMetric(float64(mirror.Microseconds())/n/1000, "mirror-ttfb-ms")
	b.ReportMetric(float64(straight.Microseconds())/n/1000, "direct-ttfb-ms")
	b.ReportMetric(float64(mirror)/float64(straight), "ratio")
}

// directFirstByte GETs a blob from upstream as a registry client does,
// answering a Bearer challenge with a token from its realm, and returns
// the time to the first body byte.
func directFirstByte(b *testing.B, c *http.Client, base, repo, digest string) time.Duration {
	start := time.Now()
	get := func(u, token string) *http.Response {
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := c.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		return resp
	}
	url := base + "/v2/" + repo + "/blobs/" + digest
	resp := get(url, "")
	if resp.StatusCode == http.StatusUnauthorized {
		resp.Body.Close()
		ch, err := authscope.ParseChallenge(resp.Header.Get("WWW-Authenticate"))
		if err != nil {
			b.Fatal(err)
		}
		realm, _ := ch.Get("realm")
		tr := get(realm+"?scope=repository:"+repo+":pull", "")
		var tok struct{ Token string }
		err = json.NewDecoder(tr.Body).Decode(&tok)
		tr.Body.Close()
		if err != nil {
			b.Fatal(err)
		}
		resp = get(url, tok.Token)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b.Fatalf("GET %s: %d", url, resp.StatusCode)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 1)); err != nil {
		b.Fatal(err)
	}
	took := time.Since(start)
	io.Copy(io.Discard, resp.Body)
	return took
}
