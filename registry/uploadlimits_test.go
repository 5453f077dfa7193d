package registry

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/cache"
)

// testClient is the header through which the tests name the client
// address the registry sees (Config.ClientIP), as Caddy's trusted
// proxies would.
const testClient = "X-Test-Client"

func limitedRegistry(t *testing.T, l cache.UploadLimits, mod ...func(*Config)) *testRegistry {
	t.Helper()
	return newTestRegistry(t, append([]func(*Config){func(c *Config) {
		c.Uploads = l
		c.ClientIP = func(r *http.Request) string {
			if ip := r.Header.Get(testClient); ip != "" {
				return ip
			}
			return remoteIP(r)
		}
	}}, mod...)...)
}

// openSession POSTs a new upload session for client.
func (tr *testRegistry) openSession(repo, client string, hdr ...string) response {
	tr.t.Helper()
	return tr.do("POST", "/v2/"+repo+"/blobs/uploads/", nil, append([]string{testClient, client}, hdr...)...)
}

// stream sends data as a body of unknown length (chunked).
func (tr *testRegistry) stream(method, path string, data []byte, hdr ...string) response {
	tr.t.Helper()
	req, err := http.NewRequest(method, tr.srv.URL+path, struct{ io.Reader }{bytes.NewReader(data)})
	if err != nil {
		tr.t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := tr.srv.Client().Do(req)
	if err != nil {
		tr.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{Response: resp, body: b}
}

// rawPatch sends PATCH path declaring contentLength bytes (which Go's
// client cannot send without the bytes) and a few of them, and returns the
// status of the answer.
func rawPatch(t *testing.T, srvURL, path, contentLength string) int {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(srvURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "PATCH %s HTTP/1.1\r\nHost: registry.test\r\nContent-Length: %s\r\n\r\nsome bytes", path, contentLength)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func (tr *testRegistry) wantUsage(sessions int, bytes int64) {
	tr.t.Helper()
	if got := tr.store.UploadUsage(); got.Sessions != sessions || got.Bytes != bytes {
		tr.t.Fatalf("open uploads %+v, want %d sessions holding %d bytes", got, sessions, bytes)
	}
}

func location(resp response) string {
	return resp.Header.Get("Location")
}

// TestUploadSessionsPerClient: a client may hold only so many open
// sessions; a refusal is 429 TOOMANYREQUESTS and opens nothing; other
// clients, and the client again once it finishes one, may go on.
func TestUploadSessionsPerClient(t *testing.T) {
	tr := limitedRegistry(t, cache.UploadLimits{PerOwner: 3})
	var open []string
	for range 3 {
		resp := tr.openSession("app", "192.0.2.1")
		tr.wantStatus(resp, http.StatusAccepted)
		open = append(open, location(resp))
	}
	refused := tr.openSession("other", "192.0.2.1")
	tr.wantError(refused, http.StatusTooManyRequests, CodeTooManyRequests)
	if refused.Header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	tr.wantUsage(3, 0)
	// A monolithic upload holds no session: still allowed.
	tr.pushBlob("app", []byte("small"))
	tr.wantStatus(tr.openSession("app", "192.0.2.2"), http.StatusAccepted)
	// An IPv6 client counts by its /64.
	for range 3 {
		tr.wantStatus(tr.openSession("app", "2001:db8:1:2::1"), http.StatusAccepted)
	}
	tr.wantError(tr.openSession("app", "2001:db8:1:2::ffff"), http.StatusTooManyRequests, CodeTooManyRequests)

	tr.wantStatus(tr.do("DELETE", open[0], nil), http.StatusNoContent)
	tr.wantStatus(tr.openSession("app", "192.0.2.1"), http.StatusAccepted)
	// A committed session frees its place too.
	d := cache.FromBytes(cache.SHA256, []byte("layer"))
	tr.wantStatus(tr.do("PUT", open[1]+"?digest="+d.String(), []byte("layer")), http.StatusCreated)
	tr.wantStatus(tr.openSession("app", "192.0.2.1"), http.StatusAccepted)
	tr.wantError(tr.openSession("app", "192.0.2.1"), http.StatusTooManyRequests, CodeTooManyRequests)
}

// TestUploadSessionsPerRepository: a repository holds only so many open
// sessions, whoever opened them.
func TestUploadSessionsPerRepository(t *testing.T) {
	tr := limitedRegistry(t, cache.UploadLimits{PerRepo: 4})
	for i := range 4 {
		tr.wantStatus(tr.openSession("app", fmt.Sprintf("192.0.2.%d", i+1)), http.StatusAccepted)
	}
	tr.wantError(tr.openSession("app", "198.51.100.1"), http.StatusTooManyRequests, CodeTooManyRequests)
	tr.wantStatus(tr.openSession("app2", "198.51.100.1"), http.StatusAccepted)
	tr.wantUsage(5, 0)
}

// TestUploadSessionsConcurrent: clients racing for the last places get
// exactly as many as the limit.
func TestUploadSessionsConcurrent(t *testing.T) {
	tr := limitedRegistry(t, cache.UploadLimits{PerOwner: 5})
	var mu sync.Mutex
	codes := map[int]int{}
	var wg sync.WaitGroup
	for range 24 {
		wg.Go(func() {
			req, _ := http.NewRequest("POST", tr.srv.URL+"/v2/app/blobs/uploads/", nil)
			req.Header.Set(testClient, "192.0.2.9")
			resp, err := tr.srv.Client().Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			mu.Lock()
			codes[resp.StatusCode]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if codes[http.StatusAccepted] != 5 || codes[http.StatusTooManyRequests] != 19 {
		t.Fatalf("answers %v, want 5 sessions and 19 refusals", codes)
	}
	tr.wantUsage(5, 0)
}

// TestUploadSessionsPerUser: a signed-in client counts as its user,
// whatever its address; users sharing an address do not share a count.
func TestUploadSessionsPerUser(t *testing.T) {
	hp := testHtpasswd(t, "a", "pw", "b", "pw")
	pol, err := authscope.NewPolicy(authscope.PolicyConfig{
		Repositories: map[string]authscope.RepositoryPolicy{
			"**": {Policies: []authscope.Grant{{Users: []string{"a", "b"}, Actions: []string{"read", "create"}}}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	a, err := authscope.NewAuthorizer(authscope.Options{Htpasswd: hp, Policy: pol})
	if err != nil {
		t.Fatal(err)
	}
	tr := limitedRegistry(t, cache.UploadLimits{PerOwner: 2}, func(c *Config) { c.Authorizer = a; c.CanRead = a.CanRead })
	as := func(user string) []string { return []string{"Authorization", "Basic " + basicCredentials(user, "pw")} }
	tr.wantStatus(tr.openSession("app", "192.0.2.1", as("a")...), http.StatusAccepted)
	tr.wantStatus(tr.openSession("app", "192.0.2.2", as("a")...), http.StatusAccepted)
	tr.wantError(tr.openSession("app", "192.0.2.3", as("a")...), http.StatusTooManyRequests, CodeTooManyRequests)
	tr.wantStatus(tr.openSession("app", "192.0.2.1", as("b")...), http.StatusAccepted)
	tr.wantStatus(tr.openSession("app", "192.0.2.1", as("b")...), http.StatusAccepted)
}

// TestUploadSessionsAfterRestart: the sessions a client left open still
// count after the registry restarts on the same storage.
func TestUploadSessionsAfterRestart(t *testing.T) {
	dir := t.TempDir()
	start := func() (*httptest.Server, *cache.Store) {
		st, err := cache.Open(cache.Options{Dir: dir, Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))})
		if err != nil {
			t.Fatal(err)
		}
		return httptest.NewServer(New(Config{Store: st, Uploads: cache.UploadLimits{PerOwner: 2, TotalBytes: 100, PerOwnerBytes: -1}})), st
	}
	post := func(srv *httptest.Server, path string, body []byte) *http.Response {
		req, _ := http.NewRequest("POST", srv.URL+path, nil)
		if body != nil {
			req, _ = http.NewRequest("PATCH", srv.URL+path, bytes.NewReader(body))
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	srv, st := start()
	first := post(srv, "/v2/app/blobs/uploads/", nil)
	post(srv, "/v2/app/blobs/uploads/", nil)
	if resp := post(srv, first.Header.Get("Location"), bytes.Repeat([]byte("x"), 60)); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("chunk: %d", resp.StatusCode)
	}
	srv.Close()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	srv, st = start()
	defer func() { srv.Close(); st.Close() }()
	if got := st.UploadUsage(); got.Sessions != 2 || got.Bytes != 60 {
		t.Fatalf("after restart: %+v", got)
	}
	if resp := post(srv, "/v2/app/blobs/uploads/", nil); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("third session after restart: %d", resp.StatusCode)
	}
	if resp := post(srv, first.Header.Get("Location"), bytes.Repeat([]byte("x"), 60)); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("chunk past the total after restart: %d", resp.StatusCode)
	}
}

// TestUploadMaxBlobSize: a blob larger than the limit is refused with 413
// SIZE_INVALID: before a byte is read when its size is declared, as the
// bytes arrive otherwise; a session that went past the limit is removed.
func TestUploadMaxBlobSize(t *testing.T) {
	const limit = 1000
	tr := limitedRegistry(t, cache.UploadLimits{MaxBlobSize: limit})
	big := bytes.Repeat([]byte("b"), limit+1)
	d := cache.FromBytes(cache.SHA256, big)

	tr.wantError(tr.do("POST", "/v2/app/blobs/uploads/?digest="+d.String(), big), http.StatusRequestEntityTooLarge, CodeSizeInvalid)
	tr.wantError(tr.stream("POST", "/v2/app/blobs/uploads/?digest="+d.String(), big), http.StatusRequestEntityTooLarge, CodeSizeInvalid)
	if _, err := tr.store.StatBlob(t.Context(), d); err == nil {
		t.Fatal("a blob over the limit was stored")
	}
	tr.pushBlob("app", big[:limit]) // the limit itself is allowed

	loc := location(tr.openSession("app", "192.0.2.1"))
	tr.wantStatus(tr.do("PATCH", loc, big[:600]), http.StatusAccepted)
	// Declared: refused unread, the session as it was.
	tr.wantError(tr.do("PATCH", loc, big[:600], "Content-Range", "600-1199"), http.StatusRequestEntityTooLarge, CodeSizeInvalid)
	tr.wantError(tr.do("PATCH", loc, big[:600]), http.StatusRequestEntityTooLarge, CodeSizeInvalid)
	tr.wantError(tr.do("PUT", loc+"?digest="+d.String(), big[:600]), http.StatusRequestEntityTooLarge, CodeSizeInvalid)
	// A Content-Length of the largest int64: the session's size plus the
	// chunk's does not wrap around to pass the limit.
	if status := rawPatch(t, tr.srv.URL, loc, "9223372036854775807"); status != http.StatusRequestEntityTooLarge {
		t.Fatalf("PATCH declaring %d bytes: status %d, want 413", int64(math.MaxInt64), status)
	}
	st := tr.do("GET", loc, nil)
	tr.wantStatus(st, http.StatusNoContent)
	if st.Header.Get("Range") != "0-599" {
		t.Fatalf("session after a refused chunk: Range %q", st.Header.Get("Range"))
	}
	tr.wantUsage(1, 600)
	// Streamed: cut off at the limit, and the session is gone.
	tr.wantError(tr.stream("PATCH", loc, big[:600]), http.StatusRequestEntityTooLarge, CodeSizeInvalid)
	tr.wantError(tr.do("GET", loc, nil), http.StatusNotFound, CodeBlobUploadUnknown)
	tr.wantError(tr.do("PATCH", loc, []byte("x")), http.StatusNotFound, CodeBlobUploadUnknown)
	tr.wantUsage(0, 0)
}

// TestUploadTotalBytes: open uploads together hold at most the total; a
// chunk that would pass it is refused (429, the session as it was) and a
// new session is refused while the total is reached.
func TestUploadTotalBytes(t *testing.T) {
	tr := limitedRegistry(t, cache.UploadLimits{TotalBytes: 1000, PerOwnerBytes: -1})
	a := location(tr.openSession("app", "192.0.2.1"))
	b := location(tr.openSession("app", "192.0.2.2"))
	tr.wantStatus(tr.do("PATCH", a, bytes.Repeat([]byte("a"), 800)), http.StatusAccepted)
	tr.wantError(tr.stream("PATCH", b, bytes.Repeat([]byte("b"), 400)), http.StatusTooManyRequests, CodeTooManyRequests)
	tr.wantError(tr.do("PATCH", b, bytes.Repeat([]byte("b"), 400)), http.StatusTooManyRequests, CodeTooManyRequests)
	tr.wantUsage(2, 800)
	// A monolithic upload counts while it is written.
	big := bytes.Repeat([]byte("m"), 300)
	tr.wantError(tr.do("POST", "/v2/app/blobs/uploads/?digest="+cache.FromBytes(cache.SHA256, big).String(), big), http.StatusTooManyRequests, CodeTooManyRequests)
	tr.wantUsage(2, 800)
	tr.wantStatus(tr.do("PATCH", b, bytes.Repeat([]byte("b"), 200)), http.StatusAccepted)
	tr.wantError(tr.openSession("app", "192.0.2.3"), http.StatusTooManyRequests, CodeTooManyRequests)
	tr.wantStatus(tr.do("DELETE", a, nil), http.StatusNoContent)
	tr.wantUsage(1, 200)
	tr.wantStatus(tr.openSession("app", "192.0.2.3"), http.StatusAccepted)
}

// TestUploadIdleTimeout: a session without a chunk for longer than the
// idle timeout is gone (BLOB_UPLOAD_UNKNOWN, its data removed) and no
// longer counts against the limits.
func TestUploadIdleTimeout(t *testing.T) {
	const idle = 300 * time.Millisecond
	tr := limitedRegistry(t, cache.UploadLimits{PerOwner: 1, IdleTimeout: idle})
	loc := location(tr.openSession("app", "192.0.2.1"))
	other := location(tr.openSession("app", "192.0.2.2"))
	tr.wantStatus(tr.do("PATCH", other, []byte("abc")), http.StatusAccepted)
	time.Sleep(idle + 100*time.Millisecond) // let both sessions go idle
	// The client's place is free again: its idle session is expired.
	tr.wantStatus(tr.openSession("app", "192.0.2.1"), http.StatusAccepted)
	tr.wantError(tr.do("PATCH", loc, []byte("x")), http.StatusNotFound, CodeBlobUploadUnknown)
	tr.wantError(tr.do("PATCH", other, []byte("x")), http.StatusNotFound, CodeBlobUploadUnknown)
	tr.wantUsage(1, 0)
}

// TestUploadBytesPerClient: one client's open uploads hold at most its
// share of the bytes; past it its chunks and new sessions are refused
// (429), while another client can still push, and finishing an upload
// gives the share back.
func TestUploadBytesPerClient(t *testing.T) {
	tr := limitedRegistry(t, cache.UploadLimits{TotalBytes: 1000, PerOwnerBytes: 300})
	a := location(tr.openSession("app", "192.0.2.1"))
	tr.wantStatus(tr.do("PATCH", a, bytes.Repeat([]byte("a"), 300)), http.StatusAccepted)
	tr.wantError(tr.do("PATCH", a, []byte("a")), http.StatusTooManyRequests, CodeTooManyRequests)
	tr.wantError(tr.stream("PATCH", a, []byte("a")), http.StatusTooManyRequests, CodeTooManyRequests)
	tr.wantError(tr.openSession("app", "192.0.2.1"), http.StatusTooManyRequests, CodeTooManyRequests)
	tr.wantUsage(1, 300)

	b := location(tr.openSession("app", "192.0.2.2"))
	data := bytes.Repeat([]byte("b"), 300)
	tr.wantStatus(tr.do("PATCH", b, data), http.StatusAccepted)
	tr.wantStatus(tr.do("PUT", b+"?digest="+cache.FromBytes(cache.SHA256, data).String(), nil), http.StatusCreated)

	tr.wantStatus(tr.do("DELETE", a, nil), http.StatusNoContent)
	tr.wantUsage(0, 0)
	tr.wantStatus(tr.openSession("app", "192.0.2.1"), http.StatusAccepted)
}

// TestMonolithicPushesPerClient: a client may have only Uploads.PerOwner
// monolithic pushes (POST ?digest= with the body) in flight; another is
// 429, and a push finishing frees its place. Such a push holds a
// temporary file and its descriptor while its body trickles in, and it is
// no session: before, one anonymous client held 400 at once on the binary
// (800 descriptors), and here the fourth was let in.
func TestMonolithicPushesPerClient(t *testing.T) {
	tr := limitedRegistry(t, cache.UploadLimits{PerOwner: 3})
	var conns []net.Conn
	for i := range 3 {
		conn, err := net.Dial("tcp", strings.TrimPrefix(tr.srv.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		d := cache.FromBytes(cache.SHA256, []byte{byte(i)})
		fmt.Fprintf(conn, "POST /v2/app/blobs/uploads/?digest=%s HTTP/1.1\r\nHost: registry.test\r\n%s: 192.0.2.1\r\nContent-Length: 1000\r\n\r\nsome bytes", d, testClient)
		conns = append(conns, conn)
	}
	// Each push in flight holds a temporary file in the store: wait for
	// the three.
	deadline := time.Now().Add(5 * time.Second)
	for {
		tmp, _ := os.ReadDir(filepath.Join(tr.dir, "tmp"))
		if len(tmp) >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d temporary files, want the 3 pushes in flight", len(tmp))
		}
		time.Sleep(10 * time.Millisecond)
	}
	push := func(client string, data []byte) response {
		d := cache.FromBytes(cache.SHA256, data)
		return tr.do("POST", "/v2/app/blobs/uploads/?digest="+d.String(), data, testClient, client)
	}
	tr.wantError(push("192.0.2.1", []byte("a fourth")), http.StatusTooManyRequests, CodeTooManyRequests)
	// Others are not held by it.
	tr.wantStatus(push("192.0.2.2", []byte("other client")), http.StatusCreated)
	// One of the three ends (its client leaves): its place is free again.
	conns[0].Close()
	deadline = time.Now().Add(5 * time.Second)
	for {
		// The server learns of the close when it next reads.
		resp := push("192.0.2.1", []byte("after one ended"))
		if resp.StatusCode == http.StatusCreated {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a push after one of three ended: %d", resp.StatusCode)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
