//go:build linux

package e2e

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// pushLoop pushes small images (a config, a layer, a manifest under a
// new tag) through base() until stop closes, and says which pushes were
// acknowledged (tag: manifest digest) and which answers no client may
// get (a 500). A cut connection or a 503/504/507 is a failed push the
// client retries; it must leave nothing half-visible, and every push
// answered 201 must stay.
type pushLoop struct {
	mu    sync.Mutex
	acked map[string]string
	bad   []string
	tries int
	done  chan struct{}
}

func startPushLoop(base func() string, repo string, workers int, stop <-chan struct{}) *pushLoop {
	p := &pushLoop{acked: map[string]string{}, done: make(chan struct{})}
	client := &http.Client{Timeout: 30 * time.Second}
	send := func(method, u string, body []byte, ct string) (int, error) {
		req, err := http.NewRequest(method, u, bytes.NewReader(body))
		if err != nil {
			return 0, err
		}
		req.Header.Set("Content-Type", ct)
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		if resp.StatusCode >= 500 && resp.StatusCode != http.StatusBadGateway && resp.StatusCode != http.StatusServiceUnavailable &&
			resp.StatusCode != http.StatusGatewayTimeout && resp.StatusCode != http.StatusInsufficientStorage {
			p.mu.Lock()
			p.bad = append(p.bad, fmt.Sprintf("%s %s: %s %s", method, u, resp.Status, b))
			p.mu.Unlock()
		}
		return resp.StatusCode, nil
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go p.push(w, send, base, repo, stop, wg.Done)
	}
	// Waited on only after every Add (an Add racing a Wait at zero is a
	// misuse the race detector reports).
	go func() {
		wg.Wait()
		close(p.done)
	}()
	return p
}

func (p *pushLoop) push(w int, send func(method, u string, body []byte, ct string) (int, error), base func() string, repo string, stop <-chan struct{}, done func()) {
	defer done()
	{
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			p.mu.Lock()
			p.tries++
			p.mu.Unlock()
			layer := make([]byte, 2048)
			_, _ = rand.Read(layer)
			config := []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"n":"%d-%d"}`, w, i))
			ok := true
			for _, b := range [][]byte{config, layer} {
				code, err := send(http.MethodPost, base()+"/v2/"+repo+"/blobs/uploads/?digest="+blobDigest(b), b, "application/octet-stream")
				if err != nil || code != http.StatusCreated {
					ok = false
					break
				}
			}
			if !ok {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			manifest := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
				`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},`+
				`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":%d}]}`,
				blobDigest(config), len(config), blobDigest(layer), len(layer)))
			tag := fmt.Sprintf("w%d-t%d", w, i)
			code, err := send(http.MethodPut, base()+"/v2/"+repo+"/manifests/"+tag, manifest, "application/vnd.oci.image.manifest.v1+json")
			if err == nil && code == http.StatusCreated {
				p.mu.Lock()
				p.acked[tag] = blobDigest(manifest)
				p.mu.Unlock()
			}
		}
	}
}

// ackedCount is how many pushes were acknowledged so far.
func (p *pushLoop) ackedCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.acked)
}

// check waits for the loop to end, then reads every acknowledged push
// back through base: its tag, manifest and blobs.
func (p *pushLoop) check(t *testing.T, base, repo string) {
	t.Helper()
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	t.Logf("%d pushes tried, %d acknowledged", p.tries, len(p.acked))
	for _, b := range p.bad {
		t.Errorf("a push got %s", b)
	}
	if len(p.acked) == 0 {
		t.Fatal("no push acknowledged")
	}
	lost := 0
	for tag, d := range p.acked {
		resp := do(t, http.MethodGet, base+"/v2/"+repo+"/manifests/"+tag, nil,
			map[string]string{"Accept": "application/vnd.oci.image.manifest.v1+json"})
		body := readAll(t, resp)
		if resp.StatusCode != http.StatusOK || blobDigest(body) != d {
			lost++
			if lost <= 5 {
				t.Errorf("acknowledged push %s:%s (%s): %s", repo, tag, d, resp.Status)
			}
			continue
		}
		for _, ref := range strings.Split(string(body), `"digest":"`)[1:] {
			bd := ref[:strings.IndexByte(ref, '"')]
			if r := do(t, http.MethodHead, base+"/v2/"+repo+"/blobs/"+bd, nil, nil); r.StatusCode != http.StatusOK {
				t.Errorf("blob %s of acknowledged push %s: %s", bd, tag, r.Status)
			}
		}
	}
	if lost > 0 {
		t.Errorf("%d of %d acknowledged pushes lost", lost, len(p.acked))
	}
}

// reloadQuiet posts the replica's config to its admin API and ignores
// how that ended: the drills kill the process while it reloads.
func reloadQuiet(s *server, caddyfile []byte) {
	req, err := http.NewRequest(http.MethodPost, "http://"+s.admin+"/load", bytes.NewReader(caddyfile))
	if err != nil {
		return
	}
	req.Header.Set("Content-Type", "text/caddyfile")
	req.Header.Set("Cache-Control", "must-revalidate")
	resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
	if err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

// TestReplicaKilledDuringReloadUnderPushes: pushes go on through the
// front while one replica is reloaded and killed (-9) in the middle of
// the reload, three times over at different points, then started again.
// No push gets a 500, every acknowledged push reads back whole, and the
// replica serves again.
func TestReplicaKilledDuringReloadUnderPushes(t *testing.T) {
	c := startCluster(t, 2, "", nil)
	r := c.replicas[0]
	cfg, err := os.ReadFile(r.config)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	loop := startPushLoop(func() string { return c.front.url("") }, "reloadkill/app", 4, stop)
	for round, after := range []time.Duration{0, 30 * time.Millisecond, 150 * time.Millisecond} {
		before := loop.ackedCount()
		waitFor(t, 20*time.Second, "pushes acknowledged before the reload", func() bool { return loop.ackedCount() > before+2 })
		go reloadQuiet(r, cfg)
		time.Sleep(after)
		r.kill()
		t.Logf("round %d: killed %s into the reload", round, after)
		time.Sleep(300 * time.Millisecond)
		r.start()
	}
	before := loop.ackedCount()
	waitFor(t, 20*time.Second, "pushes acknowledged after the last restart", func() bool { return loop.ackedCount() > before+2 })
	close(stop)
	loop.check(t, c.front.url(""), "reloadkill/app")
	for _, rr := range c.replicas {
		rr.alive("after the kills")
	}
}

// TestS3MovedWhileReplicasReload: versitygw is killed and started again
// on another port with the same data folder, and each replica is
// reloaded with the new address while pushes go on through the front.
// Pushes fail while S3 is away (503 or a cut, never 500), succeed again
// once the replicas have the new address, and every acknowledged one,
// before or after, reads back whole.
func TestS3MovedWhileReplicasReload(t *testing.T) {
	c := startCluster(t, 2, "", nil)
	stop := make(chan struct{})
	loop := startPushLoop(func() string { return c.front.url("") }, "s3moved/app", 4, stop)
	waitFor(t, 20*time.Second, "pushes acknowledged", func() bool { return loop.ackedCount() > 3 })
	old := c.s3.Endpoint
	c.s3.Kill()
	time.Sleep(500 * time.Millisecond)
	c.s3.MoveTo(t)
	t.Logf("versitygw moved from %s to %s", old, c.s3.Endpoint)
	for _, r := range c.replicas {
		cfg, err := os.ReadFile(r.config)
		if err != nil {
			t.Fatal(err)
		}
		moved := bytes.ReplaceAll(cfg, []byte("endpoint "+old), []byte("endpoint "+c.s3.Endpoint))
		if bytes.Equal(moved, cfg) {
			t.Fatalf("the replica's config names no endpoint %s", old)
		}
		if err := os.WriteFile(r.config, moved, 0o644); err != nil {
			t.Fatal(err)
		}
		r.reload(t, moved)
	}
	before := loop.ackedCount()
	waitFor(t, 30*time.Second, "pushes acknowledged after the move", func() bool { return loop.ackedCount() > before+3 })
	close(stop)
	loop.check(t, c.front.url(""), "s3moved/app")
	for _, r := range c.replicas {
		r.alive("after the move")
	}
}
