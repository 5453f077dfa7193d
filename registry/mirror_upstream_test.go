package registry

import (
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcr "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// fakeUpstream is go-containerregistry's registry behind a wrapper that can
// require Docker token auth, counts requests and blob bytes, throttles,
// breaks or corrupts blob transfers, answers 429/5xx, and goes down.
type fakeUpstream struct {
	t    testing.TB
	srv  *httptest.Server
	push *httptest.Server // the bare registry, for test setup
	reg  http.Handler

	mu        sync.Mutex
	counts    map[string]int // "GET blobs", "HEAD manifests", "GET token", ...
	blobBytes int64          // blob body bytes sent

	// Token auth: when tokens is set, /v2/ requests need a Bearer token
	// from /token; with user set the token service wants Basic creds.
	tokens       bool
	user, pass   string
	tokenTTL     int
	issued       map[string]bool
	tokensIssued int

	// rtt delays every answer (token service included), as a distant
	// upstream's round trip would.
	rtt time.Duration

	// manifestGate, if set, holds every manifest GET (counted and logged
	// first) until it closes.
	manifestGate chan struct{}

	// Blob GET behaviour.
	chunk    int           // bytes per write (default 64 KiB)
	gate     chan struct{} // if set: after the first chunk wait for it to close (a blob of one chunk is not held)
	delay    time.Duration // between chunks
	failMid  bool          // send half, then drop the connection
	corrupt  bool          // flip the first byte
	noLength bool          // no Content-Length: a chunked body of unknown length

	// The next failN requests get failStatus (with retryAfter, if set).
	failN      int
	failStatus int
	retryAfter string

	// Per-repository answers, for what a request under one name may
	// learn about another. With strictBlobs a blob request under a
	// repository that was not pushed with that blob gets 404
	// BLOB_UNKNOWN, as on Docker Hub (go-containerregistry's registry
	// keeps one pool of blobs for all repositories), or NAME_UNKNOWN
	// under one never pushed (as distribution answers). Requests under a
	// repository in failRepos get its status.
	strictBlobs bool
	// refusing, if set, holds each strictBlobs refusal until it closes.
	refusing  chan struct{}
	repoBlobs map[string]map[string]bool
	failRepos map[string]int
	// log has every /v2/ request as "METHOD kind repo", in order.
	log []string
}

func newFakeUpstream(t testing.TB) *fakeUpstream {
	u := &fakeUpstream{t: t, reg: ggcr.New(ggcr.Logger(nopLogger())), counts: map[string]int{}, issued: map[string]bool{}, chunk: 64 << 10,
		repoBlobs: map[string]map[string]bool{}, failRepos: map[string]int{}}
	u.srv = httptest.NewServer(u)
	u.push = httptest.NewServer(u.reg)
	t.Cleanup(func() { u.srv.Close(); u.push.Close() })
	return u
}

func (u *fakeUpstream) count(key string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.counts[key]
}

func (u *fakeUpstream) total() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for _, v := range u.counts {
		n += v
	}
	return n
}

func (u *fakeUpstream) bytesSent() int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.blobBytes
}

// set changes behaviour under the lock.
func (u *fakeUpstream) set(f func(u *fakeUpstream)) {
	u.mu.Lock()
	defer u.mu.Unlock()
	f(u)
}

func kindOf(path string) string {
	for _, k := range []string{"blobs", "manifests", "tags", "referrers"} {
		if strings.Contains(path, "/"+k+"/") {
			return k
		}
	}
	return "other"
}

func (u *fakeUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	rtt := u.rtt
	u.mu.Unlock()
	time.Sleep(rtt)
	if r.URL.Path == "/token" {
		u.serveToken(w, r)
		return
	}
	u.mu.Lock()
	kind := kindOf(r.URL.Path)
	repo := repoOf(r.URL.Path, kind)
	u.counts[r.Method+" "+kind]++
	u.log = append(u.log, r.Method+" "+kind+" "+repo)
	if u.tokens {
		tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !u.issued[tok] {
			u.mu.Unlock()
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="fake.test"`, u.srv.URL))
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
	}
	if u.failN > 0 {
		u.failN--
		if u.retryAfter != "" {
			w.Header().Set("Retry-After", u.retryAfter)
		}
		status := u.failStatus
		u.mu.Unlock()
		w.WriteHeader(status)
		return
	}
	if status := u.failRepos[repo]; status != 0 {
		u.mu.Unlock()
		writeUpstreamError(w, status, "UNAVAILABLE", "try again later")
		return
	}
	if kind == "blobs" && u.strictBlobs && !u.repoBlobs[repo][path.Base(r.URL.Path)] {
		_, known := u.repoBlobs[repo]
		refusing := u.refusing
		u.mu.Unlock()
		if refusing != nil {
			<-refusing
		}
		if !known {
			writeUpstreamError(w, http.StatusNotFound, "NAME_UNKNOWN", "repository name not known to registry")
			return
		}
		writeUpstreamError(w, http.StatusNotFound, "BLOB_UNKNOWN", "blob unknown to registry")
		return
	}
	gate := u.manifestGate
	u.mu.Unlock()
	if kind == "manifests" && r.Method == http.MethodGet && gate != nil {
		<-gate
	}
	if kind == "blobs" && r.Method == http.MethodGet {
		u.reg.ServeHTTP(&blobWriter{ResponseWriter: w, u: u}, r)
		return
	}
	u.reg.ServeHTTP(w, r)
}

// repoOf is the repository a /v2/<repo>/<kind>/... path names.
func repoOf(p, kind string) string {
	repo, _, _ := strings.Cut(strings.TrimPrefix(p, "/v2/"), "/"+kind+"/")
	return repo
}

func writeUpstreamError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"errors":[{"code":%q,"message":%q}]}`, code, msg)
}

// requests is the log of /v2/ requests so far.
func (u *fakeUpstream) requests() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.log)
}

// holds records that repo holds img's blobs, for strictBlobs.
func (u *fakeUpstream) holds(repo string, img v1.Image) {
	u.t.Helper()
	m, err := img.Manifest()
	if err != nil {
		u.t.Fatal(err)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.repoBlobs[repo] == nil {
		u.repoBlobs[repo] = map[string]bool{}
	}
	u.repoBlobs[repo][m.Config.Digest.String()] = true
	for _, l := range m.Layers {
		u.repoBlobs[repo][l.Digest.String()] = true
	}
}

func (u *fakeUpstream) serveToken(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.counts["GET token"]++
	if u.user != "" {
		user, pass, ok := r.BasicAuth()
		if !ok || user != u.user || pass != u.pass {
			w.Header().Set("WWW-Authenticate", `Basic realm="fake"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
	}
	u.tokensIssued++
	tok := fmt.Sprintf("tok-%d", u.tokensIssued)
	u.issued[tok] = true
	resp := map[string]any{"token": tok}
	if u.tokenTTL > 0 {
		resp["expires_in"] = u.tokenTTL
	}
	_ = json.NewEncoder(w).Encode(resp)
}

// blobWriter shapes a blob body as the test asked.
type blobWriter struct {
	http.ResponseWriter
	u       *fakeUpstream
	written int
}

func (b *blobWriter) WriteHeader(status int) {
	b.u.mu.Lock()
	noLength := b.u.noLength
	b.u.mu.Unlock()
	if noLength {
		b.Header().Del("Content-Length")
	}
	b.ResponseWriter.WriteHeader(status)
}

func (b *blobWriter) Write(p []byte) (int, error) {
	b.u.mu.Lock()
	chunk, gate, delay, failMid, corrupt := b.u.chunk, b.u.gate, b.u.delay, b.u.failMid, b.u.corrupt
	b.u.mu.Unlock()
	total := len(p)
	if corrupt && b.written == 0 && len(p) > 0 {
		p = append([]byte{p[0] ^ 0xff}, p[1:]...)
	}
	done := 0
	for done < total {
		n := min(chunk, total-done)
		if failMid && done+n > total/2 {
			n = total/2 - done
			if n > 0 {
				b.ResponseWriter.Write(p[done : done+n])
				b.count(n)
			}
			b.ResponseWriter.(http.Flusher).Flush()
			conn, _, err := http.NewResponseController(b.ResponseWriter).Hijack()
			if err == nil {
				conn.Close()
			}
			return done, http.ErrAbortHandler
		}
		m, err := b.ResponseWriter.Write(p[done : done+n])
		b.count(m)
		done += m
		if err != nil {
			return done, err
		}
		b.ResponseWriter.(http.Flusher).Flush()
		if b.written == m && done < total && gate != nil {
			<-gate
		}
		if delay > 0 {
			time.Sleep(delay)
		}
	}
	return total, nil
}

func (b *blobWriter) count(n int) {
	b.written += n
	b.u.mu.Lock()
	b.u.blobBytes += int64(n)
	b.u.mu.Unlock()
}

// pushImage writes img to repo:tag on the bare registry.
func (u *fakeUpstream) pushImage(repo, tag string, img v1.Image) {
	u.t.Helper()
	ref := u.ref(repo + ":" + tag)
	if err := remote.Write(ref, img); err != nil {
		u.t.Fatalf("push %s: %v", ref, err)
	}
	u.holds(repo, img)
}

func (u *fakeUpstream) pushIndex(repo, tag string, idx v1.ImageIndex) {
	u.t.Helper()
	ref := u.ref(repo + ":" + tag)
	if err := remote.WriteIndex(ref, idx); err != nil {
		u.t.Fatalf("push %s: %v", ref, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		u.t.Fatal(err)
	}
	for _, c := range im.Manifests {
		if img, err := idx.Image(c.Digest); err == nil {
			u.holds(repo, img)
		}
	}
}

func (u *fakeUpstream) ref(s string) name.Reference {
	pu, _ := url.Parse(u.push.URL)
	ref, err := name.ParseReference(pu.Host+"/"+s, name.Insecure)
	if err != nil {
		u.t.Fatal(err)
	}
	return ref
}

func nopLogger() *log.Logger { return log.New(io.Discard, "", 0) }
