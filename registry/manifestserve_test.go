package registry

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/caddy-oci/caddy-oci/authscope"
)

// TestLargeManifestStalledReaders: clients that ask for a 24 MiB manifest
// (more than the socket buffers take) and never read the answer hold its
// share of the serving budget (manifestmem.go) only until
// its write timeout: more of them than the budget covers do not keep
// another client from pulling it for long.
func TestLargeManifestStalledReaders(t *testing.T) {
	tr := newTestRegistry(t, func(c *Config) { c.MaxManifestSize = 32 << 20 })
	m := tr.image("big/app", "layer")
	big := bytes.Replace(m, []byte(`{`), []byte(`{"annotations":{"pad":"`+strings.Repeat("p", 24<<20)+`"},`), 1)
	tr.wantStatus(tr.pushManifest("big/app", "v1", MediaTypeOCIManifest, big), http.StatusCreated)
	pull := func() time.Duration {
		start := time.Now()
		resp := tr.do(http.MethodGet, "/v2/big/app/manifests/v1", nil, "Accept", MediaTypeOCIManifest)
		tr.wantStatus(resp, http.StatusOK)
		if !bytes.Equal(resp.body, big) {
			t.Fatalf("got %d bytes, not the manifest", len(resp.body))
		}
		return time.Since(start)
	}
	// The write timeout bounds the timed pull too: it is set from what
	// one pull takes here (under -race on a loaded machine, seconds), so
	// that only the stalled readers run into it.
	alone := pull()
	timeout := max(time.Second, 4*alone)
	withManifestLimits(t, func(l *manifestLimits) { l.writeTimeout, l.minRate = timeout, 1<<40 })

	// Twice as many stalled readers as the budget serves at once.
	stalled := 2 * manifestServeBudget / min(2*len(big), manifestServeBudget)
	for range stalled {
		c, err := net.Dial("tcp", strings.TrimPrefix(tr.srv.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET /v2/big/app/manifests/v1 HTTP/1.1\r\nHost: x\r\nAccept: %s\r\n\r\n", MediaTypeOCIManifest)
	}
	time.Sleep(200 * time.Millisecond)
	// Behind every stalled reader's timeout at most, plus its own pull.
	d := pull()
	if limit := time.Duration(stalled)*timeout + 4*alone + 5*time.Second; d > limit {
		t.Fatalf("the pull took %v behind %d stalled readers (alone: %v; write timeout %v)", d, stalled, alone, timeout)
	}
	t.Logf("pulled behind %d stalled readers in %v (alone: %v; write timeout %v)", stalled, d.Round(time.Millisecond), alone.Round(time.Millisecond), timeout)
}

// stallingWriter is the writer of a client that has the answer's headers
// and reads no body: Write blocks until released.
type stallingWriter struct {
	hd       http.Header
	writing  chan struct{}
	released chan struct{}
	once     sync.Once
}

func (w *stallingWriter) Header() http.Header { return w.hd }
func (w *stallingWriter) WriteHeader(int)     {}
func (w *stallingWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.writing) })
	<-w.released
	return len(p), nil
}

// TestUnseenSmallManifestGivesBackItsShare: a manifest not served since
// start holds max_manifest_size's share of the serving budget until it
// is read; a small one then holds nothing. With max_manifest_size at
// half the budget, one client that stalls on a small manifest's body
// kept every other unseen or large manifest waiting (it held the whole
// budget until its write ended, which for a small one has no deadline).
func TestUnseenSmallManifestGivesBackItsShare(t *testing.T) {
	tr := newTestRegistry(t, func(c *Config) { c.MaxManifestSize = manifestServeBudget / 2 })
	tr.wantStatus(tr.pushManifest("small/a", "v1", MediaTypeOCIManifest, tr.image("small/a", "a")), http.StatusCreated)
	tr.wantStatus(tr.pushManifest("small/b", "v1", MediaTypeOCIManifest, tr.image("small/b", "b")), http.StatusCreated)
	// As after a restart: no size seen yet.
	tr.h.manifestSizes.mu.Lock()
	tr.h.manifestSizes.m = nil
	tr.h.manifestSizes.mu.Unlock()

	w := &stallingWriter{hd: http.Header{}, writing: make(chan struct{}), released: make(chan struct{})}
	req := httptest.NewRequest(http.MethodGet, "/v2/small/a/manifests/v1", nil)
	req.Header.Set("Accept", MediaTypeOCIManifest)
	served := make(chan struct{})
	go func() {
		defer close(served)
		tr.h.ServeHTTP(w, req)
	}()
	select {
	case <-w.writing:
	case <-time.After(10 * time.Second):
		t.Fatal("the stalled pull never wrote")
	}
	defer func() {
		close(w.released)
		<-served
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, _ := http.NewRequestWithContext(ctx, http.MethodGet, tr.srv.URL+"/v2/small/b/manifests/v1", nil)
	r.Header.Set("Accept", MediaTypeOCIManifest)
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatalf("an unseen small manifest waited behind a stalled pull of another: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

// TestTricklingManifestPushers: pushers that declare a large manifest and
// send nothing hold their share of the receiving budget (manifestmem.go)
// only until its read timeout: more of them than the budget covers do
// not keep another push of a large manifest waiting for long.
func TestTricklingManifestPushers(t *testing.T) {
	budget := semaphore.NewWeighted(4 << 20)
	withManifestLimits(t, func(l *manifestLimits) { l.receive, l.readTimeout, l.minRate = budget, time.Second, 1<<40 })
	tr := newTestRegistry(t, func(c *Config) { c.MaxManifestSize = 4 << 20 })
	m := tr.image("big/app", "layer")
	big := bytes.Replace(m, []byte(`{`), []byte(`{"annotations":{"pad":"`+strings.Repeat("p", 2<<20)+`"},`), 1)

	// Twice as many silent pushers as the budget lets in at once.
	for i := range 2 * 4 / 2 {
		c, err := net.Dial("tcp", strings.TrimPrefix(tr.srv.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "PUT /v2/big/app/manifests/s%d HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n{", i, MediaTypeOCIManifest, len(big))
	}
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	pushed := make(chan response, 1)
	go func() { pushed <- tr.pushManifest("big/app", "v1", MediaTypeOCIManifest, big) }()
	select {
	case resp := <-pushed:
		tr.wantStatus(resp, http.StatusCreated)
	case <-time.After(15 * time.Second):
		t.Fatal("the push waited 15 s behind silent pushers")
	}
	t.Logf("pushed behind silent pushers in %v", time.Since(start).Round(time.Millisecond))
	// A silent pusher's manifest was never stored.
	tr.wantStatus(tr.do(http.MethodGet, "/v2/big/app/manifests/s0", nil, "Accept", MediaTypeOCIManifest), http.StatusNotFound)
}

// TestTransferTime: a large manifest's bytes are given the base time, or
// as long as they take at the slowest rate allowed, whichever is longer.
func TestTransferTime(t *testing.T) {
	for _, tc := range []struct {
		size int64
		want time.Duration
	}{
		{0, time.Minute},
		{64 << 10, time.Minute},
		{1 << 20, time.Minute},
		{4 << 20, 128 * time.Second},
		{32 << 20, 1024 * time.Second},
	} {
		if got := currentManifestLimits.Load().transferTime(time.Minute, tc.size); got != tc.want {
			t.Errorf("transferTime(1m, %d) = %v, want %v", tc.size, got, tc.want)
		}
	}
}

// TestTricklingPusherOfExistingTag: a push that names a tag the
// repository holds has its body read early, with auth on, to learn
// whether it moves the tag (movesTag). That read takes its share of the
// receiving budget before the first byte and is bound by
// the read timeout, as every other: before, it read the body whole,
// outside the budget and with no deadline, so pushers of an existing tag
// (`latest`, the usual case) held megabytes each for as long as they
// liked, however many they were.
func TestTricklingPusherOfExistingTag(t *testing.T) {
	budget := semaphore.NewWeighted(4 << 20)
	withManifestLimits(t, func(l *manifestLimits) { l.receive, l.readTimeout, l.minRate = budget, time.Second, 1<<40 })
	pol, err := authscope.NewPolicy(authscope.PolicyConfig{Repositories: map[string]authscope.RepositoryPolicy{
		"big/**": {Anonymous: []string{"read", "create", "update"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	az, err := authscope.NewAuthorizer(authscope.Options{Policy: pol})
	if err != nil {
		t.Fatal(err)
	}
	tr := newTestRegistry(t, func(c *Config) { c.MaxManifestSize, c.Authorizer, c.CanRead = 4<<20, az, az.CanRead })
	m := tr.image("big/app", "layer")
	big := bytes.Replace(m, []byte(`{`), []byte(`{"annotations":{"pad":"`+strings.Repeat("p", 2<<20)+`"},`), 1)
	tr.wantStatus(tr.pushManifest("big/app", "latest", MediaTypeOCIManifest, big), http.StatusCreated)

	c, err := net.Dial("tcp", strings.TrimPrefix(tr.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "PUT /v2/big/app/manifests/latest HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n{", MediaTypeOCIManifest, len(big))
	held := false
	for start := time.Now(); time.Since(start) < 5*time.Second && !held; time.Sleep(20 * time.Millisecond) {
		if budget.TryAcquire(4 << 20) {
			budget.Release(4 << 20)
		} else {
			held = true
		}
	}
	if !held {
		t.Error("a silent pusher of an existing tag holds no share of the receiving budget")
	}
	// The read timeout (1 s) ends its read, and the share is free
	// again.
	freed := false
	for start := time.Now(); time.Since(start) < 10*time.Second && !freed; time.Sleep(20 * time.Millisecond) {
		freed = budget.TryAcquire(4 << 20)
	}
	if !freed {
		t.Fatal("the silent pusher's share was not given back after the read deadline")
	}
	budget.Release(4 << 20)
}

// withManifestLimits puts in, for the rest of t, a copy of the process's
// manifest limits as change makes it (see manifestLimits).
func withManifestLimits(t *testing.T, change func(*manifestLimits)) {
	t.Helper()
	old := currentManifestLimits.Load()
	l := *old
	change(&l)
	currentManifestLimits.Store(&l)
	t.Cleanup(func() { currentManifestLimits.Store(old) })
}
