package e2e

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// chunkedCut is a chunked push to a replica whose backend (S3,
// PostgreSQL) dies while a chunk's body is arriving: the drills resume it
// afterwards, on another replica.
type chunkedCut struct {
	t     *testing.T
	blob  []byte
	chunk int
	loc   string // the session, as a request URI
}

// startChunkedCut POSTs a session on s for blob, PATCHes its first chunk,
// then streams the second and calls cut once cutAt of its bytes are
// sent. It returns the push and the second chunk's answer (nil: the
// connection was cut) with the time cut returned.
func startChunkedCut(t *testing.T, s *server, blob []byte, chunk, cutAt int, cut func()) (*chunkedCut, *http.Response, time.Time) {
	t.Helper()
	resp := do(t, http.MethodPost, s.url("/v2/drill/chunked/blobs/uploads/"), nil, nil)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST: %s", resp.Status)
	}
	p := &chunkedCut{t: t, blob: blob, chunk: chunk, loc: location(t, s, resp).RequestURI()}
	if resp := p.patch(s, 0); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("first chunk: %s", resp.Status)
	}
	pr, pw := io.Pipe()
	answered := make(chan *http.Response, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPatch, s.url(p.loc), pr)
		req.ContentLength = int64(chunk)
		req.Header.Set("Content-Type", "application/octet-stream")
		req.Header.Set("Content-Range", fmt.Sprintf("%d-%d", chunk, 2*chunk-1))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			answered <- nil
			return
		}
		resp.Body.Close()
		answered <- resp
	}()
	if _, err := pw.Write(blob[chunk : chunk+cutAt]); err != nil {
		t.Fatal(err)
	}
	cut()
	done := time.Now()
	go func() {
		_, _ = pw.Write(blob[chunk+cutAt : 2*chunk])
		pw.Close()
	}()
	return p, <-answered, done
}

// patch sends the chunk at off to s.
func (p *chunkedCut) patch(s *server, off int) *http.Response {
	end := min(off+p.chunk, len(p.blob))
	return do(p.t, http.MethodPatch, s.url(p.loc), p.blob[off:end], map[string]string{
		"Content-Type": "application/octet-stream", "Content-Range": fmt.Sprintf("%d-%d", off, end-1)})
}

// resume asks s where the session stands (for up to wait) and PATCHes
// the rest from there, as a client does; it returns where it resumed.
func (p *chunkedCut) resume(s *server, wait time.Duration) int {
	t := p.t
	t.Helper()
	var off int
	waitFor(t, wait, "the session's status", func() bool {
		resp := do(t, http.MethodGet, s.url(p.loc), nil, nil)
		if resp.StatusCode != http.StatusNoContent {
			return false
		}
		_, err := fmt.Sscanf(resp.Header.Get("Range"), "0-%d", &off)
		off++
		return err == nil
	})
	from := off
	for off < len(p.blob) {
		resp := p.patch(s, off)
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("chunk at %d: %s %s", off, resp.Status, readAll(t, resp))
		}
		off = min(off+p.chunk, len(p.blob))
	}
	return from
}

// commit is the final PUT of the session on s.
func (p *chunkedCut) commit(s *server) *http.Response {
	sep := "?"
	if strings.Contains(p.loc, "?") {
		sep = "&"
	}
	return do(p.t, http.MethodPut, s.url(p.loc+sep+"digest="+blobDigest(p.blob)), nil, nil)
}
