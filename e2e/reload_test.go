package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Config reloads under push traffic. A reload provisions the new config,
// then shuts the old HTTP servers down; Go's http.Server.Shutdown closes
// HTTP/1.1 connections that are idle at that moment, and a client that
// sends its next request on one of them just then gets a reset
// (golang/go#23829). Go clients resend GET and HEAD by themselves, but not
// POST, PUT or PATCH. The handler answers with Connection: close once a
// newer config has been provisioned, and the reload waits half a second
// before the old servers shut down, which leaves only connections idle
// for that long to the race; clients that retry a request that failed
// on a reused connection (crane, skopeo and podman with --retry-times) see
// no failure, and HTTP/2 (GOAWAY) none at all.

// reloadServer starts caddy on a Caddyfile with an oci_registry site on a
// free loopback port, with the global options globals (e.g. a servers
// block), and returns it with the Caddyfile's text for reloads.
func reloadServer(t *testing.T, globals string) (*server, []byte) {
	t.Helper()
	return reloadServerWith(t, globals, "")
}

// reloadServerWith is reloadServer with lines added to the oci_registry
// block (metadata_dir, say).
func reloadServerWith(t *testing.T, globals, lines string) (*server, []byte) {
	t.Helper()
	needBinary(t)
	dataDir := t.TempDir()
	port, adminPort := strconv.Itoa(freePort(t)), strconv.Itoa(freePort(t))
	cfg := "{\n\tadmin localhost:" + adminPort + "\n\tauto_https off\n" + globals + "\n}\n\n" +
		"http://:" + port + " {\n\tbind 127.0.0.1\n\toci_registry {\n\t\tstorage " + strconv.Quote(dataDir) + "\n" + lines + "\t}\n}\n"
	config := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, config: config, addr: "127.0.0.1:" + port, admin: "localhost:" + adminPort, dataDir: dataDir}
	s.start()
	return s, []byte(cfg)
}

// reload posts caddyfile to the admin API's /load; must-revalidate makes
// Caddy reload even when the config has not changed.
func (s *server) reload(t *testing.T, caddyfile []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+s.admin+"/load", bytes.NewReader(caddyfile))
	if err != nil {
		t.Error(err)
		return
	}
	req.Header.Set("Content-Type", "text/caddyfile")
	req.Header.Set("Cache-Control", "must-revalidate")
	resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
	if err != nil {
		t.Errorf("reload: %v", err)
		return
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("reload: %s %s", resp.Status, b)
	}
}

// reloadRepeatedly reloads s n times, pause apart, and then closes done.
func reloadRepeatedly(t *testing.T, s *server, caddyfile []byte, n int, pause time.Duration, done chan<- struct{}) {
	defer close(done)
	for i := 0; i < n; i++ {
		time.Sleep(pause)
		s.reload(t, caddyfile)
	}
	time.Sleep(pause)
}

// pushCounts tallies a load run.
type pushCounts struct {
	requests atomic.Int64 // requests sent, retries included
	failed   atomic.Int64 // transport errors on the first attempt
	pooled   atomic.Int64 // of those, on a connection that was idle in the pool
	retried  atomic.Int64 // transport errors that a retry on a new connection did not fix
	status   atomic.Int64 // answers with an unexpected status
	closing  atomic.Int64 // answers with Connection: close
	mu       sync.Mutex
	errs     []string // a few examples
}

func (c *pushCounts) example(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.errs) < 5 {
		c.errs = append(c.errs, fmt.Sprintf(format, args...))
	}
}

func (c *pushCounts) String() string {
	return fmt.Sprintf("%d requests, %d transport errors without retry (%d on pooled connections), %d after one retry, %d unexpected statuses, %d answers with Connection: close; e.g. %q",
		c.requests.Load(), c.failed.Load(), c.pooled.Load(), c.retried.Load(), c.status.Load(), c.closing.Load(), c.errs)
}

// pusher pushes small images with plain Go HTTP/1.1 (or h2c) clients:
// a monolithic POST of a blob, a POST and PUT of another, a manifest PUT
// and a GET, as registry clients do, over keep-alive connections.
type pusher struct {
	base   string
	client *http.Client
	retry  *http.Client // one new connection per request
	counts *pushCounts
}

// send sends one request and, after a transport error, once more on a
// fresh connection (what crane and skopeo's retries amount to). It
// returns the response with its body read, or nil.
func (p *pusher) send(method, u, contentType string, body []byte, want int) *http.Response {
	for attempt := 0; attempt < 2; attempt++ {
		p.counts.requests.Add(1)
		var pooled bool
		trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { pooled = i.Reused || i.WasIdle }}
		req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), method, u, bytes.NewReader(body))
		if err != nil {
			panic(err)
		}
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		client := p.client
		if attempt > 0 {
			client = p.retry
		}
		resp, err := client.Do(req)
		if err != nil {
			if attempt == 0 {
				p.counts.failed.Add(1)
				if pooled {
					p.counts.pooled.Add(1)
				}
				p.counts.example("%s (pooled %v): %v", method, pooled, err)
				continue
			}
			p.counts.retried.Add(1)
			p.counts.example("%s retry: %v", method, err)
			return nil
		}
		if resp.Close {
			p.counts.closing.Add(1)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			p.counts.status.Add(1)
			p.counts.example("%s %s: reading body: %v", method, u, err)
			return nil
		}
		if resp.StatusCode != want {
			p.counts.status.Add(1)
			p.counts.example("%s %s: %s %s", method, u, resp.Status, b)
			return nil
		}
		resp.Body = io.NopCloser(bytes.NewReader(b))
		return resp
	}
	return nil
}

// pushImage pushes one image of two fresh blobs to repo:tag and reads
// its manifest back.
func (p *pusher) pushImage(repo, tag string) {
	layer, config := []byte(repo+tag+" layer "+strings.Repeat("x", 4096)), []byte(`{"tag":"`+tag+`"}`)
	ld, cd := sha256Digest(layer), sha256Digest(config)

	// Monolithic: one POST with the bytes.
	if p.send(http.MethodPost, p.base+"/v2/"+repo+"/blobs/uploads/?digest="+ld, "application/octet-stream", layer, http.StatusCreated) == nil {
		return
	}
	// POST, then PUT with the bytes.
	resp := p.send(http.MethodPost, p.base+"/v2/"+repo+"/blobs/uploads/", "", nil, http.StatusAccepted)
	if resp == nil {
		return
	}
	loc := resp.Header.Get("Location")
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	if p.send(http.MethodPut, p.base+loc+sep+"digest="+cd, "application/octet-stream", config, http.StatusCreated) == nil {
		return
	}
	manifest := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":%d}]}`,
		cd, len(config), ld, len(layer))
	if p.send(http.MethodPut, p.base+"/v2/"+repo+"/manifests/"+tag, "application/vnd.oci.image.manifest.v1+json", []byte(manifest), http.StatusCreated) == nil {
		return
	}
	p.send(http.MethodGet, p.base+"/v2/"+repo+"/manifests/"+tag, "", nil, http.StatusOK)
}

func sha256Digest(b []byte) string { return fmt.Sprintf("sha256:%x", sha256.Sum256(b)) }

// pushDuringReloads runs workers pushers against s until reloads reloads
// of caddyfile are done, and returns the tally.
func pushDuringReloads(t *testing.T, s *server, caddyfile []byte, transport *http.Transport, workers, reloads int) *pushCounts {
	t.Helper()
	counts := new(pushCounts)
	done := make(chan struct{})
	go reloadRepeatedly(t, s, caddyfile, reloads, 300*time.Millisecond, done)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := &pusher{
				base:   "http://" + s.addr,
				client: &http.Client{Transport: transport, Timeout: time.Minute},
				retry:  &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: time.Minute},
				counts: counts,
			}
			for n := 0; ; n++ {
				select {
				case <-done:
					return
				default:
				}
				p.pushImage(fmt.Sprintf("reload/w%d", w), fmt.Sprintf("t%d", n))
			}
		}()
	}
	wg.Wait()
	transport.CloseIdleConnections()
	return counts
}

// TestReloadUnderLoad pushes with plain Go clients over HTTP/1.1 while
// the config is reloaded ten times, and again over h2c. Over HTTP/1.1 a
// few requests may fail on their first attempt (Go's server closes idle
// connections at shutdown; nothing on the server side can close that
// race), but each must succeed when sent again on a new connection, and
// nothing may fail with a status. Over HTTP/2 nothing may fail at all.
func TestReloadUnderLoad(t *testing.T) {
	const workers, reloads = 16, 10
	t.Run("http1", func(t *testing.T) {
		s, cfg := reloadServer(t, "")
		tr := &http.Transport{MaxIdleConnsPerHost: workers, DisableCompression: true}
		counts := pushDuringReloads(t, s, cfg, tr, workers, reloads)
		t.Logf("HTTP/1.1, %d reloads: %s", reloads, counts)
		if counts.retried.Load() != 0 || counts.status.Load() != 0 {
			t.Errorf("requests failed after a retry or with a status: %s", counts)
		}
	})
	t.Run("h2c", func(t *testing.T) {
		s, cfg := reloadServer(t, "\tservers {\n\t\tprotocols h1 h2 h2c\n\t}")
		tr := &http.Transport{MaxIdleConnsPerHost: workers, DisableCompression: true, Protocols: new(http.Protocols)}
		tr.Protocols.SetUnencryptedHTTP2(true)
		counts := pushDuringReloads(t, s, cfg, tr, workers, reloads)
		t.Logf("h2c, %d reloads: %s", reloads, counts)
		if counts.failed.Load() != 0 || counts.status.Load() != 0 {
			t.Errorf("requests failed over HTTP/2: %s", counts)
		}
	})
}
