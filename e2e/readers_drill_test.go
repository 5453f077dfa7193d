package e2e

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// slowBlobUpstream serves one blob under library/app, its body sent step
// bytes at a time, pause apart, and returns its digest.
func slowBlobUpstream(t *testing.T, blob []byte, step int, pause time.Duration) (*httptest.Server, string) {
	t.Helper()
	d := fmt.Sprintf("sha256:%x", sha256.Sum256(blob))
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/blobs/"+d) {
			if r.URL.Path == "/v2/" {
				return
			}
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
		w.Header().Set("Docker-Content-Digest", d)
		if r.Method == http.MethodHead {
			return
		}
		for i := 0; i < len(blob); i += step {
			if _, err := w.Write(blob[i:min(i+step, len(blob))]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(pause):
			}
		}
	}))
	t.Cleanup(up.Close)
	return up, d
}

// TestStalledReadersAndStop: 600 clients that ask for a blob and never
// read it (half of a local blob, half of a mirrored one being filled) cost
// the server little memory and keep no other client from a whole read,
// and SIGTERM still ends the process within its grace period.
func TestStalledReadersAndStop(t *testing.T) {
	needBinary(t)
	blob := randomBytes(t, 16<<20)
	up, d := slowBlobUpstream(t, blob, 1<<20, 10*time.Millisecond)
	dataDir := t.TempDir()
	port, adminPort := strconv.Itoa(freePort(t)), strconv.Itoa(freePort(t))
	cfg := "{\n\tadmin localhost:" + adminPort + "\n\tauto_https off\n\tgrace_period 3s\n}\n\n" +
		"http://:" + port + " {\n\tbind 127.0.0.1\n\toci_registry {\n\t\tstorage " + strconv.Quote(dataDir) +
		"\n\t\tmirror docker.io {\n\t\t\tupstream " + up.URL + "\n\t\t}\n\t}\n}\n"
	config := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, config: config, addr: "127.0.0.1:" + port, admin: "localhost:" + adminPort, dataDir: dataDir}
	s.start()
	local := pushBlob(t, s, "app", blob)
	pid := s.cmd.Process.Pid
	resetPeakRSS(t, pid)
	before := peakRSS(t, pid)

	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range 600 {
		path := "/v2/app/blobs/" + local
		if i%2 == 1 {
			path = "/v2/docker.io/library/app/blobs/" + d
		}
		c, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.(*net.TCPConn).SetReadBuffer(4096)
		if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, s.addr); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	start := time.Now()
	resp := do(t, http.MethodGet, s.url("/v2/docker.io/library/app/blobs/"+d), nil, nil)
	if b := readAll(t, resp); resp.StatusCode != http.StatusOK || string(b) != string(blob) {
		t.Fatalf("a whole read beside 600 stalled ones: %s, %d bytes", resp.Status, len(b))
	}
	t.Logf("a whole read beside 600 stalled readers took %s", time.Since(start))
	grew := peakRSS(t, pid) - before
	t.Logf("peak RSS grew by %.0f MiB with 600 stalled readers", grew)
	if grew > 150 {
		t.Errorf("peak RSS grew by %.0f MiB with 600 stalled readers, want <= 150 MiB", grew)
	}

	start = time.Now()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.done:
		t.Logf("stopped %s after SIGTERM", time.Since(start))
	case <-time.After(15 * time.Second):
		t.Fatal("still running 15 s after SIGTERM with a 3 s grace period, behind stalled readers")
	}
}

// TestMirrorKilledMidBlobFill: killed (SIGKILL) while a mirrored blob is
// being filled and read, the restarted server answers HEAD, a range and a
// whole GET of it with the blob's exact bytes (fetched again), never a
// part of the dead fill.
func TestMirrorKilledMidBlobFill(t *testing.T) {
	needBinary(t)
	blob := randomBytes(t, 8<<20)
	up, d := slowBlobUpstream(t, blob, 256<<10, 100*time.Millisecond)
	s := mirrorServer(t, up.URL)
	u := s.url("/v2/docker.io/library/app/blobs/" + d)
	reading := make(chan struct{})
	go func() {
		resp, err := http.Get(u)
		if err != nil {
			close(reading)
			return
		}
		defer resp.Body.Close()
		_, _ = io.CopyN(io.Discard, resp.Body, 1<<20)
		close(reading)
		_, _ = io.Copy(io.Discard, resp.Body)
	}()
	<-reading
	if resp := do(t, http.MethodHead, u, nil, nil); resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Length") != strconv.Itoa(len(blob)) {
		t.Fatalf("HEAD while filling: %s, Content-Length %s", resp.Status, resp.Header.Get("Content-Length"))
	}
	s.kill()
	s.start()
	if resp := do(t, http.MethodHead, u, nil, nil); resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Length") != strconv.Itoa(len(blob)) {
		t.Fatalf("HEAD after the restart: %s, Content-Length %s", resp.Status, resp.Header.Get("Content-Length"))
	}
	resp := do(t, http.MethodGet, u, nil, map[string]string{"Range": "bytes=8000000-"})
	if b := readAll(t, resp); resp.StatusCode != http.StatusPartialContent || string(b) != string(blob[8000000:]) {
		t.Fatalf("range after the restart: %s, %d bytes (right: %v)", resp.Status, len(b), string(b) == string(blob[8000000:]))
	}
	resp = do(t, http.MethodGet, u, nil, nil)
	if b := readAll(t, resp); resp.StatusCode != http.StatusOK || string(b) != string(blob) {
		t.Fatalf("GET after the restart: %s, %d bytes", resp.Status, len(b))
	}
}
