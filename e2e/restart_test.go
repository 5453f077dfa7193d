package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"testing"
	"time"
)

// TestRestartMidUpload kills the server (SIGKILL) in the middle of a chunk
// of a resumable upload and restarts it on the same storage. The session
// must either resume at the end of the last complete chunk or be reported
// as BLOB_UPLOAD_UNKNOWN; either way the blob must not be visible before
// its upload is committed, and a resumed upload must commit to the right
// digest.
func TestRestartMidUpload(t *testing.T) {
	s := newServer(t, t.TempDir())
	const repo = "e2e/restart"

	chunk1 := randomBytes(t, 1<<20)
	chunk2 := randomBytes(t, 4<<20)
	blob := append(append([]byte{}, chunk1...), chunk2...)
	digest := fmt.Sprintf("sha256:%x", sha256.Sum256(blob))

	// POST starts the session.
	resp := do(t, http.MethodPost, s.url("/v2/"+repo+"/blobs/uploads/"), nil, nil)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST: %s", resp.Status)
	}
	loc := location(t, s, resp)

	// First chunk completes.
	resp = do(t, http.MethodPatch, loc.String(), chunk1, map[string]string{
		"Content-Type":  "application/octet-stream",
		"Content-Range": fmt.Sprintf("0-%d", len(chunk1)-1),
	})
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("PATCH 1: %s", resp.Status)
	}
	if got, want := resp.Header.Get("Range"), fmt.Sprintf("0-%d", len(chunk1)-1); got != want {
		t.Errorf("PATCH 1: Range %q, want %q", got, want)
	}
	loc = location(t, s, resp)
	headBlob(t, s, repo, digest, http.StatusNotFound, "after the first chunk")

	// Second chunk: send the headers and half the body, then kill.
	conn, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "PATCH %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\nContent-Range: %d-%d\r\nContent-Length: %d\r\n\r\n",
		loc.RequestURI(), s.addr, len(chunk1), len(blob)-1, len(chunk2))
	if _, err := conn.Write(chunk2[:len(chunk2)/2]); err != nil {
		t.Fatal(err)
	}
	// Kill while the server is writing the chunk: wait (with a deadline)
	// until the session's data on disk has grown past the first chunk.
	deadline := time.Now().Add(10 * time.Second)
	for uploadBytes(t, s.dataDir) <= int64(len(chunk1)) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("upload data on disk before kill: %d bytes (first chunk %d)", uploadBytes(t, s.dataDir), len(chunk1))
	s.kill()
	conn.Close()

	s.start()
	headBlob(t, s, repo, digest, http.StatusNotFound, "after the restart")

	resp = do(t, http.MethodGet, loc.String(), nil, nil)
	switch resp.StatusCode {
	case http.StatusNotFound:
		if code := errorCode(t, resp); code != "BLOB_UPLOAD_UNKNOWN" {
			t.Fatalf("upload status after restart: 404 with code %q, want BLOB_UPLOAD_UNKNOWN", code)
		}
		t.Log("session did not survive the restart; it failed cleanly with BLOB_UPLOAD_UNKNOWN")
		return
	case http.StatusNoContent:
	default:
		t.Fatalf("upload status after restart: %s, want 204 or 404", resp.Status)
	}
	if got, want := resp.Header.Get("Range"), fmt.Sprintf("0-%d", len(chunk1)-1); got != want {
		t.Fatalf("upload status after restart: Range %q, want %q (the cut-off chunk must be discarded)", got, want)
	}
	loc = location(t, s, resp)

	// Resume: send the second chunk again, whole.
	resp = do(t, http.MethodPatch, loc.String(), chunk2, map[string]string{
		"Content-Type":  "application/octet-stream",
		"Content-Range": fmt.Sprintf("%d-%d", len(chunk1), len(blob)-1),
	})
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("PATCH 2 after restart: %s", resp.Status)
	}
	loc = location(t, s, resp)
	headBlob(t, s, repo, digest, http.StatusNotFound, "before the commit")

	q := loc.Query()
	q.Set("digest", digest)
	loc.RawQuery = q.Encode()
	resp = do(t, http.MethodPut, loc.String(), nil, nil)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT: %s", resp.Status)
	}
	if got := resp.Header.Get("Docker-Content-Digest"); got != digest {
		t.Errorf("PUT: Docker-Content-Digest %q, want %s", got, digest)
	}
	head := headBlob(t, s, repo, digest, http.StatusOK, "after the commit")
	if head.ContentLength != int64(len(blob)) {
		t.Errorf("HEAD: Content-Length %d, want %d", head.ContentLength, len(blob))
	}
	resp = do(t, http.MethodGet, s.url("/v2/"+repo+"/blobs/"+digest), nil, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET blob: %s", resp.Status)
	}
	if body := readAll(t, resp); !bytes.Equal(body, blob) {
		t.Errorf("GET blob: %d bytes that differ from the %d uploaded", len(body), len(blob))
	}
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// do sends one request; the response body is read and kept by readAll.
func do(t *testing.T, method, u string, body []byte, header map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body == nil {
		req.Body, req.ContentLength = http.NoBody, 0
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	client := &http.Client{Timeout: time.Minute}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	resp.Body = io.NopCloser(bytes.NewReader(b))
	return resp
}

func readAll(t *testing.T, resp *http.Response) []byte {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// location resolves a response's Location header against the server.
func location(t *testing.T, s *server, resp *http.Response) *url.URL {
	t.Helper()
	l := resp.Header.Get("Location")
	if l == "" {
		t.Fatalf("%s %s: no Location", resp.Request.Method, resp.Request.URL)
	}
	base, err := url.Parse(s.url("/"))
	if err != nil {
		t.Fatal(err)
	}
	u, err := base.Parse(l)
	if err != nil {
		t.Fatalf("Location %q: %v", l, err)
	}
	return u
}

func headBlob(t *testing.T, s *server, repo, digest string, want int, when string) *http.Response {
	t.Helper()
	resp := do(t, http.MethodHead, s.url("/v2/"+repo+"/blobs/"+digest), nil, nil)
	if resp.StatusCode != want {
		t.Fatalf("HEAD blob %s: %s, want %d", when, resp.Status, want)
	}
	return resp
}

// errorCode returns the first code of a distribution-spec error envelope.
func errorCode(t *testing.T, resp *http.Response) string {
	t.Helper()
	var env struct {
		Errors []struct {
			Code string `json:"code"`
		} `json:"errors"`
	}
	b := readAll(t, resp)
	if err := json.Unmarshal(b, &env); err != nil || len(env.Errors) == 0 {
		t.Fatalf("%s: not an error envelope: %q (%v)", resp.Status, b, err)
	}
	return env.Errors[0].Code
}

// uploadBytes sums the sizes of the files under the store's uploads/ and
// tmp/ folders (see cache.Options for the layout).
func uploadBytes(t *testing.T, dataDir string) int64 {
	t.Helper()
	var n int64
	for _, sub := range []string{"uploads", "tmp"} {
		_ = filepath.WalkDir(filepath.Join(dataDir, sub), func(_ string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return nil
			}
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
			return nil
		})
	}
	return n
}
