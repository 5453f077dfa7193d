package registry

import (
	"context"
	"io"
	"sync"
	"testing"
	"time"
)

// waitRecorder records upstream's waits by kind.
type waitRecorder struct {
	nopMirrorObserver
	mu    sync.Mutex
	waits map[string][]time.Duration
}

func (o *waitRecorder) UpstreamWait(_, kind string, wait time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.waits == nil {
		o.waits = map[string][]time.Duration{}
	}
	o.waits[kind] = append(o.waits[kind], wait)
}

func (o *waitRecorder) of(kind string) []time.Duration {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]time.Duration(nil), o.waits[kind]...)
}

// TestMirrorUpstreamWait: each exchange with upstream reports how long
// upstream took to send its headers, by kind (what the metric
// caddy_oci_mirror_upstream_wait_seconds shows, and the benchmark takes
// from a cold pull's first byte to tell the mirror's own time from
// upstream's): a token service's and a manifest's answers at least the
// round trip, and a blob's wait reported while its body is still held,
// so it is the time to headers, not to the last byte.
func TestMirrorUpstreamWait(t *testing.T) {
	const rtt = 30 * time.Millisecond
	env, path, data, gate := heldColdBlob(t)
	rec := &waitRecorder{}
	env.mirror.obs = rec
	env.up.set(func(u *fakeUpstream) { u.rtt, u.tokens = rtt, true })

	resp := env.do("GET", "/v2/docker.io/library/app/manifests/v1", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("manifest GET: %d %s", resp.StatusCode, resp.body)
	}
	for _, kind := range []string{"token", "manifest"} {
		waits := rec.of(kind)
		if len(waits) == 0 {
			t.Fatalf("no %s wait reported: %v", kind, rec.waits)
		}
		for _, w := range waits {
			if w < rtt {
				t.Errorf("%s wait %v, shorter than upstream's round trip %v", kind, w, rtt)
			}
		}
	}

	r, err := env.get(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	waitFor(t, "the blob's wait while its body is held", func() bool { return len(rec.of("blob")) > 0 })
	if w := rec.of("blob")[0]; w < rtt || w > 10*time.Second {
		t.Errorf("blob wait %v, want at least the round trip %v", w, rtt)
	}
	close(gate)
	body, err := io.ReadAll(r.Body)
	if err != nil || string(body) != string(data) {
		t.Fatalf("blob: %d bytes (%v), want %d", len(body), err, len(data))
	}
	if n, gets := len(rec.of("blob")), env.up.count("GET blobs")+env.up.count("HEAD blobs"); n != gets {
		t.Errorf("%d blob waits reported for %d blob requests upstream", n, gets)
	}
}
