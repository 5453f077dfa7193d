package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestFileDescriptorExhaustion runs the server with a limit of 128 open
// files and without the listener's reserve (oci_fd_reserve off, as a
// JSON config that leaves it out), fills it with idle connections until
// it has none left, and
// pushes and pulls on a connection it had accepted before: each answer is
// 503 UNAVAILABLE with Retry-After (the server's state, no bug, and gone
// once connections close), never a 500, and the process lives. Once the
// idle connections close, pushes and pulls work again without a restart,
// and after one everything acknowledged is there: no write the limit
// interrupted left the store broken. Before, each was a 500 "internal
// error".
func TestFileDescriptorExhaustion(t *testing.T) {
	needBinary(t)
	if runtime.GOOS != "linux" {
		t.Skip("reads the server's /proc entries")
	}
	const limit = 128
	// A mirror's upstream with one blob, fetched first while the server
	// has no file left.
	cold := randomBytes(t, 32<<10)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/library/x/blobs/"+blobDigest(cold) {
			w.Header().Set("Content-Length", strconv.Itoa(len(cold)))
			w.Write(cold)
		}
	}))
	defer up.Close()
	dataDir := t.TempDir()
	s := limitedServer(t, limit, false, dataDir, "\toci_registry {\n\t\tstorage "+strconv.Quote(dataDir)+
		"\n\t\tmirror docker.io {\n\t\t\tupstream "+up.URL+"\n\t\t}\n\t}\n")
	before := fdCount(t, s)

	im := newChurnImage(t)
	if !im.pushBlobs(s, "fd/app") || !im.putManifest(s, "fd/app", "v1") {
		t.Fatal("pushing the first image failed")
	}

	// A manifest whose record in the database is large (50 KB of
	// annotations), so that tagging it again and again fills the
	// database's memtable: it turns over, opening a new file, while the
	// process has none left.
	big := bytes.Replace(im.manifest, []byte(`{"schemaVersion":2,`),
		[]byte(`{"schemaVersion":2,"annotations":{"pad":"`+strings.Repeat("p", 50_000)+`"},`), 1)
	if resp := do(t, http.MethodPut, s.url("/v2/fd/app/manifests/big"), big, map[string]string{"Content-Type": ociManifest}); resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT the large manifest: %s %s", resp.Status, readAll(t, resp))
	}

	// A chunked upload with its first chunk in, before the limit.
	chunked := randomBytes(t, 256<<10)
	half := len(chunked) / 2
	resp := do(t, http.MethodPost, s.url("/v2/fd/app/blobs/uploads/"), nil, nil)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST upload: %s", resp.Status)
	}
	resp = do(t, http.MethodPatch, location(t, s, resp).String(), chunked[:half],
		map[string]string{"Content-Range": fmt.Sprintf("0-%d", half-1), "Content-Type": "application/octet-stream"})
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("PATCH first chunk: %s", resp.Status)
	}
	session := location(t, s, resp).String()

	// Connections the server accepted before it ran out, one per request
	// to come (an error answer to a request with a body closes its
	// connection).
	clients := acceptedClients(t, s, 5, 20*time.Second)
	idle := exhaustFiles(t, s, limit)
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()

	layer := randomBytes(t, 64<<10)
	for i, rq := range []struct {
		method, path string
		body         []byte
		hdr          string // Content-Range
	}{
		// First: a refusal of a request with a body closes its
		// connection, and the descriptor freed would let the mirror
		// connect upstream, then fail to create its file with the
		// client's answer already under way.
		{http.MethodGet, s.url("/v2/docker.io/library/x/blobs/" + blobDigest(cold)), nil, ""},
		{http.MethodPost, s.url("/v2/fd/app/blobs/uploads/?digest=" + blobDigest(layer)), layer, ""},
		{http.MethodGet, s.url("/v2/fd/app/blobs/" + blobDigest(im.layer)), nil, ""},
		{http.MethodPatch, session, chunked[half:], fmt.Sprintf("%d-%d", half, len(chunked)-1)},
	} {
		req, _ := http.NewRequest(rq.method, rq.path, bytes.NewReader(rq.body))
		if rq.hdr != "" {
			req.Header.Set("Content-Range", rq.hdr)
			req.Header.Set("Content-Type", "application/octet-stream")
		}
		resp, err := clients[i].Do(req)
		if err != nil {
			t.Fatalf("%s %s with no file left: %v", rq.method, rq.path, err)
		}
		b, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Logf("%s %s with no file left: %s", rq.method, rq.path, resp.Status)
		switch {
		case rerr != nil && resp.StatusCode == http.StatusOK:
			// A transfer broken off (the body was under way when a file
			// could not be opened): never passed off as complete.
		case resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "" &&
			bytes.Contains(b, []byte("UNAVAILABLE")):
		case resp.StatusCode < 300:
			// Done with a descriptor freed meanwhile: as good.
		default:
			t.Errorf("%s %s with no file left: %s %s (want 503 UNAVAILABLE with Retry-After)", rq.method, rq.path, resp.Status, b)
		}
	}
	// Tag the large manifest 200 times (10 MB of records) with no file
	// left.
	var tagged []string
	codes := map[int]int{}
	for i := range 200 {
		tag := "t" + strconv.Itoa(i)
		req, _ := http.NewRequest(http.MethodPut, s.url("/v2/fd/app/manifests/"+tag), bytes.NewReader(big))
		req.Header.Set("Content-Type", ociManifest)
		resp, err := clients[4].Do(req)
		if err != nil {
			t.Errorf("PUT %s with no file left: %v", tag, err)
			break
		}
		b := readAll(t, resp)
		resp.Body.Close()
		codes[resp.StatusCode]++
		switch {
		case resp.StatusCode == http.StatusCreated:
			tagged = append(tagged, tag)
		case resp.StatusCode != http.StatusServiceUnavailable:
			t.Errorf("PUT %s with no file left: %s %s", tag, resp.Status, b)
		}
	}
	t.Logf("200 tags of a manifest with 50 KB of annotations, with no file left: %v", codes)
	time.Sleep(200 * time.Millisecond) // a fatal error takes its time
	select {
	case <-s.done:
		t.Fatalf("the server died:\n%s", s.out.String())
	default:
	}

	for _, c := range idle {
		c.Close()
	}
	idle = nil
	deadline := time.Now().Add(30 * time.Second)
	for fdCount(t, s) > before+8 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("files: %d before, %d at the limit, %d after the connections closed", before, limit, fdCount(t, s))

	// Works again without a restart; the upload goes on from where the
	// server says it is.
	if got := readAll(t, do(t, http.MethodGet, s.url("/v2/docker.io/library/x/blobs/"+blobDigest(cold)), nil, nil)); !bytes.Equal(got, cold) {
		t.Errorf("the mirror's blob after the limit: %d other bytes", len(got))
	}
	resp = do(t, http.MethodGet, session, nil, nil)
	var end int
	if _, err := fmt.Sscanf(resp.Header.Get("Range"), "0-%d", &end); resp.StatusCode != http.StatusNoContent || err != nil || (end+1 != half && end+1 != len(chunked)) {
		t.Fatalf("upload status after the limit: %s, Range %q (want 0-%d or 0-%d)", resp.Status, resp.Header.Get("Range"), half-1, len(chunked)-1)
	}
	if end+1 == half {
		resp = do(t, http.MethodPatch, session, chunked[half:],
			map[string]string{"Content-Range": fmt.Sprintf("%d-%d", half, len(chunked)-1), "Content-Type": "application/octet-stream"})
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("PATCH second chunk after the limit: %s %s", resp.Status, readAll(t, resp))
		}
		session = location(t, s, resp).String()
	}
	q := "?"
	if strings.Contains(session, "?") {
		q = "&"
	}
	if resp = do(t, http.MethodPut, session+q+"digest="+blobDigest(chunked), nil, nil); resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT closing the upload after the limit: %s %s", resp.Status, readAll(t, resp))
	}
	if got := readAll(t, do(t, http.MethodGet, s.url("/v2/fd/app/blobs/"+blobDigest(chunked)), nil, nil)); !bytes.Equal(got, chunked) {
		t.Fatalf("the chunked blob reads back as %d other bytes", len(got))
	}

	im2 := newChurnImage(t)
	if !im2.pushBlobs(s, "fd/app") || !im2.putManifest(s, "fd/app", "v2") {
		t.Fatalf("pushing after the connections closed failed (5xx: %d, e.g. %v)", churn5xx.Load(), churnSample.Load())
	}
	checkImage(t, s, "fd/app", "v1", "after the limit")
	checkImage(t, s, "fd/app", "v2", "after the limit")

	checkImage(t, s, "fd/app", "big", "after the limit")
	for _, tag := range tagged {
		checkImage(t, s, "fd/app", tag, "after the limit")
	}

	s.kill()
	s.start()
	for _, tag := range append([]string{"v1", "v2", "big"}, tagged...) {
		checkImage(t, s, "fd/app", tag, "after a restart")
	}
}

// TestFileDescriptorReserve runs the server with a limit of 128 open
// files as its Caddyfile is (oci_registry keeps descriptors free at its
// listener by itself), and has a client open and close connections by
// the dozen as fast as it can for 5 seconds: the server never accepts
// more than leave 64 descriptors free, and 8 clients that had connected
// before tag a manifest with 50 KB of annotations all along: nearly every
// push is answered 201, the rest 503, none fails otherwise, and the
// metadata database never breaks. Without the reserve, descriptors freed in bulk went to
// new connections between the metadata's check and its write: badger's
// new memtable failed to open, every read after panicked.
func TestFileDescriptorReserve(t *testing.T) {
	needBinary(t)
	if runtime.GOOS != "linux" {
		t.Skip("reads the server's /proc entries")
	}
	const limit = 128
	dataDir := t.TempDir()
	port, adminPort := strconv.Itoa(freePort(t)), strconv.Itoa(freePort(t))
	cfg := "{\n\tadmin localhost:" + adminPort + "\n\tauto_https off\n}\n\nhttp://:" + port +
		" {\n\tbind 127.0.0.1\n\toci_registry {\n\t\tstorage " + strconv.Quote(dataDir) + "\n\t}\n}\n"
	config := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, config: config, addr: "127.0.0.1:" + port, admin: "localhost:" + adminPort,
		dataDir: dataDir, nofile: limit}
	s.start()

	im := newChurnImage(t)
	if !im.pushBlobs(s, "fd/app") {
		t.Fatal("pushing the blobs failed")
	}
	big := bytes.Replace(im.manifest, []byte(`{"schemaVersion":2,`),
		[]byte(`{"schemaVersion":2,"annotations":{"pad":"`+strings.Repeat("p", 50_000)+`"},`), 1)
	var clients []*http.Client
	for range 8 {
		c := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
		resp, err := c.Get(s.url("/v2/"))
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
		resp.Body.Close()
		clients = append(clients, c)
	}

	stop := make(chan struct{})
	var peak atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the flood
		defer wg.Done()
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			select {
			case <-stop:
				return
			default:
			}
			for len(conns) < 2*limit {
				c, err := net.DialTimeout("tcp", s.addr, time.Second)
				if err != nil {
					break
				}
				conns = append(conns, c)
			}
			if n := int64(fdCount(t, s)); n > peak.Load() {
				peak.Store(n)
			}
			time.Sleep(20 * time.Millisecond)
			k := min(len(conns), 64)
			for _, c := range conns[:k] {
				c.Close()
			}
			conns = conns[k:]
		}
	}()
	var pushed, refused, failed atomic.Int64
	var sample atomic.Value
	deadline := time.Now().Add(5 * time.Second)
	for ci, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline); i++ {
				req, _ := http.NewRequest(http.MethodPut, s.url(fmt.Sprintf("/v2/fd/app/manifests/c%d-%d", ci, i)), bytes.NewReader(big))
				req.Header.Set("Content-Type", ociManifest)
				resp, err := c.Do(req)
				if err != nil {
					failed.Add(1)
					sample.Store(err.Error())
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				switch resp.StatusCode {
				case http.StatusCreated:
					pushed.Add(1)
				case http.StatusServiceUnavailable:
					// The metadata's own guard: the database holds a
					// descriptor per table (1 MiB each), and 50 KB a
					// push grows it fast towards a limit of 128.
					refused.Add(1)
				default:
					failed.Add(1)
					sample.Store(resp.Status + " " + string(b))
				}
			}
		}()
	}
	time.Sleep(time.Until(deadline))
	close(stop)
	wg.Wait()
	t.Logf("%d tags pushed, %d refused (503), %d failed under the flood; at most %d of %d files open",
		pushed.Load(), refused.Load(), failed.Load(), peak.Load(), limit)
	if n := failed.Load(); n > 0 {
		t.Errorf("%d pushes failed, e.g. %v", n, sample.Load())
	}
	if p, r := pushed.Load(), refused.Load(); r > p/10 {
		t.Errorf("%d pushes refused, %d taken: the flood kept the registry from its work", r, p)
	}
	if p := peak.Load(); p > limit-32 {
		t.Errorf("the server held %d files, leaving fewer than 32 of %d free", p, limit)
	}
	select {
	case <-s.done:
		t.Fatalf("the server died:\n%s", s.out.String())
	default:
	}
	if out := s.out.String(); strings.Contains(out, "panic") || strings.Contains(out, "opening memtable") {
		t.Errorf("the metadata database failed under the flood:\n%s", out)
	}
	checkImage(t, s, "fd/app", "c0-0", "after the flood")
}

// limitedServer starts the built binary with at most limit open files,
// the listener's descriptor reserve on or off, serving site (the lines
// of the site block after its bind) with its storage in dataDir (empty:
// none of this machine's).
func limitedServer(t *testing.T, limit int, reserve bool, dataDir, site string) *server {
	t.Helper()
	port, adminPort := strconv.Itoa(freePort(t)), strconv.Itoa(freePort(t))
	global := "\tadmin localhost:" + adminPort + "\n\tauto_https off\n"
	if !reserve {
		global += "\tservers {\n\t\tlistener_wrappers {\n\t\t\toci_fd_reserve off\n\t\t}\n\t}\n"
	}
	cfg := "{\n" + global + "}\n\nhttp://:" + port + " {\n\tbind 127.0.0.1\n" + site + "}\n"
	config := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, config: config, addr: "127.0.0.1:" + port, admin: "localhost:" + adminPort,
		dataDir: dataDir, nofile: limit}
	s.start()
	return s
}

// acceptedClients are n clients, each with one connection s accepted
// and answered on, for requests once it has no file left (an error
// answer to a request with a body closes its connection: one client a
// request).
func acceptedClients(t *testing.T, s *server, n int, timeout time.Duration) []*http.Client {
	t.Helper()
	var clients []*http.Client
	for range n {
		c := &http.Client{Timeout: timeout, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
		resp, err := c.Get(s.url("/v2/"))
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp) // to its end, or the connection is not reused
		resp.Body.Close()
		clients = append(clients, c)
	}
	return clients
}

// exhaustFiles opens idle connections to s until it holds limit files,
// and returns them for the caller to close.
func exhaustFiles(t *testing.T, s *server, limit int) []net.Conn {
	t.Helper()
	var idle []net.Conn
	for len(idle) < 2*limit && fdCount(t, s) < limit {
		c, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
		if err != nil {
			for _, c := range idle {
				c.Close()
			}
			t.Fatal(err)
		}
		idle = append(idle, c)
		if len(idle)%8 == 0 {
			time.Sleep(20 * time.Millisecond) // let the server accept
		}
	}
	time.Sleep(200 * time.Millisecond)
	if n := fdCount(t, s); n < limit {
		for _, c := range idle {
			c.Close()
		}
		t.Fatalf("the server holds %d files after %d connections, below its limit %d", n, len(idle), limit)
	}
	return idle
}
