package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestStopMidPushes stops the server gracefully (SIGTERM, with a
// grace_period) while pushes are in flight: a monolithic blob and a
// chunk whose bodies are half sent, and a chunk and a monolithic blob
// that stall. The two whose bodies end inside the grace period are
// answered; whatever was acknowledged is there after the restart (the
// blob served, the session at the chunk's end, and the upload resumes
// and commits). Those the grace period cuts are not half-visible: the
// cut session resumes at its last complete chunk, the cut blob is
// absent. After the restart no temporary file of a cut write is left
// in use: the store's tmp/ holds nothing once the sessions are done.
func TestStopMidPushes(t *testing.T) {
	// The single node, and the store over the seams on the same folder
	// (blobs by the fs backend, metadata in metadata_dir).
	for _, c := range []struct {
		name   string
		metaDB bool
	}{{"single node", false}, {"fs and metadata_dir", true}} {
		t.Run(c.name, func(t *testing.T) {
			lines := ""
			if c.metaDB {
				lines = "\t\tmetadata_dir " + strconv.Quote(filepath.Join(t.TempDir(), "meta")) + "\n"
			}
			s, _ := reloadServerWith(t, "\tgrace_period 10s", lines)
			stopMidPushes(t, s)
		})
	}
}

func stopMidPushes(t *testing.T, s *server) {
	const repo = "team/stop"

	// Sessions with their first chunk acknowledged before the stop.
	first := randomBytes(t, 1<<20)
	finishing := openSession(t, s, repo)
	stalled := openSession(t, s, repo)
	for i, u := range []*string{&finishing, &stalled} {
		resp := do(t, http.MethodPatch, *u, first, map[string]string{"Content-Range": "0-" + strconv.Itoa(len(first)-1)})
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("first chunk of session %d: %s", i, resp.Status)
		}
		*u = location(t, s, resp).String()
	}
	second := randomBytes(t, 4<<20)
	whole := append(append([]byte{}, first...), second...)
	mono := randomBytes(t, 4<<20)
	cutMono := randomBytes(t, 4<<20)

	// Half of each body goes out before the signal.
	monoConn := halfSent(t, s, http.MethodPost, s.url("/v2/"+repo+"/blobs/uploads/?digest="+blobDigest(mono)), mono, "")
	chunkConn := halfSent(t, s, http.MethodPatch, finishing, second, fmt.Sprintf("%d-%d", len(first), len(whole)-1))
	cutChunkConn := halfSent(t, s, http.MethodPatch, stalled, second, fmt.Sprintf("%d-%d", len(first), len(whole)-1))
	cutMonoConn := halfSent(t, s, http.MethodPost, s.url("/v2/"+repo+"/blobs/uploads/?digest="+blobDigest(cutMono)), cutMono, "")
	defer cutChunkConn.Close()
	defer cutMonoConn.Close()
	// The server has read bytes of every body: each request is in its
	// handler when the signal comes.
	waitInHandlers(t, s.dataDir, int64(len(first)), 2)

	start := time.Now()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	monoStatus := finishBody(t, monoConn, mono)
	chunkStatus := finishBody(t, chunkConn, second)
	t.Logf("inside the grace period: monolithic %d, chunk %d", monoStatus, chunkStatus)
	select {
	case <-s.done:
		t.Logf("stopped %s after SIGTERM", time.Since(start))
	case <-time.After(40 * time.Second):
		t.Fatal("still running 40 s after SIGTERM with a 10 s grace period")
	}
	// The cut monolithic blob's temporary file went with its request.
	if left := tmpFiles(t, s.dataDir); len(left) > 0 {
		t.Errorf("tmp/ after the stop: %v; want nothing", left)
	}
	s.start()

	// Acknowledged: there.
	if monoStatus == http.StatusCreated {
		headBlob(t, s, repo, blobDigest(mono), http.StatusOK, "acknowledged before the stop")
	}
	resp := do(t, http.MethodGet, finishing, nil, nil)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("the finished chunk's session after the restart: %s, want 204", resp.Status)
	}
	wantRange := "0-" + strconv.Itoa(len(first)-1)
	if chunkStatus == http.StatusAccepted {
		wantRange = "0-" + strconv.Itoa(len(whole)-1)
	}
	if got := resp.Header.Get("Range"); got != wantRange {
		t.Fatalf("the finished chunk's session after the restart: Range %q, want %q (answered %d before the stop)", got, wantRange, chunkStatus)
	}
	commit(t, s, location(t, s, resp), whole, chunkStatus == http.StatusAccepted)
	headBlob(t, s, repo, blobDigest(whole), http.StatusOK, "committed after the restart")

	// Cut: not visible, the session at its last complete chunk.
	headBlob(t, s, repo, blobDigest(cutMono), http.StatusNotFound, "cut by the stop")
	resp = do(t, http.MethodGet, stalled, nil, nil)
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get("Range") != "0-"+strconv.Itoa(len(first)-1) {
		t.Fatalf("the cut chunk's session after the restart: %s, Range %q, want 204 with Range 0-%d",
			resp.Status, resp.Header.Get("Range"), len(first)-1)
	}
	commit(t, s, location(t, s, resp), whole, false)
	if resp := do(t, http.MethodPost, s.url("/v2/"+repo+"/blobs/uploads/?digest="+blobDigest(cutMono)), cutMono, nil); resp.StatusCode != http.StatusCreated {
		t.Fatalf("pushing the cut blob again: %s", resp.Status)
	}

	if left := tmpFiles(t, s.dataDir); len(left) > 0 {
		t.Logf("tmp/ after the restart, every session done: %v", left)
	}
}

// halfSent opens a connection, sends a request with a body of len(body)
// bytes and half that body, and returns the connection.
func halfSent(t *testing.T, s *server, method, u string, body []byte, contentRange string) net.Conn {
	t.Helper()
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	head := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n",
		method, pu.RequestURI(), s.addr, len(body))
	if contentRange != "" {
		head += "Content-Range: " + contentRange + "\r\n"
	}
	if _, err := conn.Write([]byte(head + "\r\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(body[:len(body)/2]); err != nil {
		t.Fatal(err)
	}
	return conn
}

// finishBody sends the rest of body on conn and returns the answer's
// status, or 0 when the connection broke first.
func finishBody(t *testing.T, conn net.Conn, body []byte) int {
	t.Helper()
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := conn.Write(body[len(body)/2:]); err != nil {
		t.Logf("rest of the body: %v", err)
		return 0
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Logf("answer: %v", err)
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// waitInHandlers waits until the store has read bytes of every body:
// sessions files past their first chunk and monolithic blobs' temporary
// files, n of each.
func waitInHandlers(t *testing.T, dataDir string, first int64, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var sessions, blobs int
		var files []string
		for _, sub := range []string{"uploads", "tmp"} {
			des, _ := os.ReadDir(filepath.Join(dataDir, sub))
			for _, de := range des {
				fi, err := de.Info()
				if err != nil {
					continue
				}
				files = append(files, fmt.Sprintf("%s/%s %d", sub, de.Name(), fi.Size()))
				switch {
				case sub == "uploads" && fi.Size() > first:
					sessions++
				case sub == "tmp" && fi.Size() > 0:
					blobs++
				}
			}
		}
		if sessions >= n && blobs >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 20 s the store has not read bytes of every body: %v", files)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func tmpFiles(t *testing.T, dataDir string) []string {
	t.Helper()
	des, _ := os.ReadDir(filepath.Join(dataDir, "tmp"))
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	return names
}

// commit sends the rest of whole to the session at loc (all of it from
// the first chunk's end, unless sent) and commits it.
func commit(t *testing.T, s *server, loc *url.URL, whole []byte, sent bool) {
	t.Helper()
	if !sent {
		const from = 1 << 20
		resp := do(t, http.MethodPatch, loc.String(), whole[from:], map[string]string{"Content-Range": fmt.Sprintf("%d-%d", from, len(whole)-1)})
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("resuming after the restart: %s", resp.Status)
		}
		loc = location(t, s, resp)
	}
	q := loc.Query()
	q.Set("digest", blobDigest(whole))
	loc.RawQuery = q.Encode()
	if resp := do(t, http.MethodPut, loc.String(), nil, nil); resp.StatusCode != http.StatusCreated {
		t.Fatalf("committing after the restart: %s", resp.Status)
	}
}

// TestStopMidMirrorFill stops the mirror gracefully (SIGTERM, with a
// grace_period) while it fills two cold blobs from upstream: one whose
// upstream sends the rest of its bytes inside the grace period, one whose
// upstream stalls past it. The client of the first gets the whole blob;
// the second's client gets a cut transfer, never other bytes. After the
// restart both blobs are served whole with upstream's digest (fetched
// again when the fill did not commit), and nothing half-filled is ever
// served.
func TestStopMidMirrorFill(t *testing.T) {
	needBinary(t)
	finishing, stalling := randomBytes(t, 8<<20), randomBytes(t, 8<<20)
	release := make(chan struct{})
	var releaseOnce sync.Once
	sentHalf := make(chan string, 2)
	var seenMu sync.Mutex
	seen := map[string]bool{} // a digest asked for again comes whole at once
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body []byte
		switch r.URL.Path {
		case "/v2/library/x/blobs/" + blobDigest(finishing):
			body = finishing
		case "/v2/library/x/blobs/" + blobDigest(stalling):
			body = stalling
		default:
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Header().Set("Docker-Content-Digest", blobDigest(body))
		if r.Method == http.MethodHead {
			return
		}
		seenMu.Lock()
		again := seen[r.URL.Path]
		seen[r.URL.Path] = true
		seenMu.Unlock()
		if again {
			w.Write(body)
			return
		}
		w.Write(body[:len(body)/2])
		w.(http.Flusher).Flush()
		sentHalf <- blobDigest(body)
		if bytes.Equal(body, stalling) {
			select { // past the grace period
			case <-r.Context().Done():
			case <-time.After(40 * time.Second):
			}
			return
		}
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		w.Write(body[len(body)/2:])
	}))
	defer up.Close()
	defer releaseOnce.Do(func() { close(release) })

	dataDir := t.TempDir()
	port, adminPort := strconv.Itoa(freePort(t)), strconv.Itoa(freePort(t))
	cfg := "{\n\tadmin localhost:" + adminPort + "\n\tauto_https off\n\tgrace_period 5s\n}\n\nhttp://:" + port +
		" {\n\tbind 127.0.0.1\n\toci_registry {\n\t\tstorage " + strconv.Quote(dataDir) +
		"\n\t\tmirror docker.io {\n\t\t\tupstream " + up.URL + "\n\t\t}\n\t}\n}\n"
	config := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, config: config, addr: "127.0.0.1:" + port, admin: "localhost:" + adminPort, dataDir: dataDir}
	s.start()

	type got struct {
		b   []byte
		err error
	}
	pull := func(d string) <-chan got {
		ch := make(chan got, 1)
		go func() {
			resp, err := (&http.Client{Timeout: time.Minute}).Get(s.url("/v2/docker.io/library/x/blobs/" + d))
			if err != nil {
				ch <- got{err: err}
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				ch <- got{err: fmt.Errorf("%s", resp.Status)}
				return
			}
			b, err := io.ReadAll(resp.Body)
			ch <- got{b, err}
		}()
		return ch
	}
	finishingPull, stallingPull := pull(blobDigest(finishing)), pull(blobDigest(stalling))
	for range 2 {
		select {
		case <-sentHalf:
		case <-time.After(30 * time.Second):
			t.Fatal("the mirror did not start both fills in 30 s")
		}
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	releaseOnce.Do(func() { close(release) })
	if g := <-finishingPull; g.err != nil || !bytes.Equal(g.b, finishing) {
		t.Errorf("the fill whose upstream finished inside the grace period: %d bytes, %v; want the whole blob", len(g.b), g.err)
	}
	if g := <-stallingPull; g.err == nil && !bytes.Equal(g.b, stalling) {
		t.Errorf("the fill cut by the stop: %d bytes and no error; want the whole blob or a broken transfer", len(g.b))
	}
	select {
	case <-s.done:
	case <-time.After(40 * time.Second):
		t.Fatal("still running 40 s after SIGTERM with a 5 s grace period")
	}
	// The cut fill's temporary file went with it.
	if left := tmpFiles(t, s.dataDir); len(left) > 0 {
		t.Errorf("tmp/ after the stop: %v; want nothing", left)
	}
	s.start()
	for _, b := range [][]byte{finishing, stalling} {
		g := <-pull(blobDigest(b))
		if g.err != nil || !bytes.Equal(g.b, b) {
			t.Errorf("blob %s after the restart: %d bytes, %v; want it whole", blobDigest(b), len(g.b), g.err)
		}
	}
}

// TestStopMidPushS3: a monolithic push of unknown length (a chunked
// request body) to one node on S3 goes to the bucket as a multipart
// upload, part by part as the body arrives. A graceful stop (SIGTERM,
// with a grace_period) while its body stalls past the first part must not
// leave the multipart upload in the bucket: the process exits while the
// request still waits for its body, so the push's own abort never runs.
func TestStopMidPushS3(t *testing.T) {
	srv, bucket := s3Bucket(t)
	site := strings.Replace(s3EmbeddedSite(srv, bucket, filepath.Join(t.TempDir(), "meta"), ""), "path_style", "path_style\n\t\t\tpart_size 5MiB", 1)
	port, adminPort := strconv.Itoa(freePort(t)), strconv.Itoa(freePort(t))
	cfg := "{\n\tadmin localhost:" + adminPort + "\n\tauto_https off\n\tgrace_period 3s\n}\n\nhttp://:" + port +
		" {\n\tbind 127.0.0.1\n" + site + "\n}\n"
	config := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, config: config, addr: "127.0.0.1:" + port, admin: "localhost:" + adminPort}
	s.start()

	blob := randomBytes(t, 12<<20)
	conn, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	head := fmt.Sprintf("POST /v2/team/stop/blobs/uploads/?digest=%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
		blobDigest(blob), s.addr)
	sent := blob[:7<<20] // the first part and some of the second
	if _, err := fmt.Fprintf(conn, "%s%x\r\n%s\r\n", head, len(sent), sent); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, uploads := srv.Keys(t, bucket, "registry/"); len(uploads) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no multipart upload in the bucket 20 s into the push")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.done:
	case <-time.After(40 * time.Second):
		t.Fatal("still running 40 s after SIGTERM with a 3 s grace period")
	}
	if objects, uploads := srv.Keys(t, bucket, "registry/"); len(uploads) > 0 {
		t.Errorf("after the stop the bucket holds %d multipart uploads (%v) and objects %v; want none of the cut push", len(uploads), uploads, objects)
	}
}
