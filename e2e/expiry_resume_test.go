package e2e

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// rawDo sends one request with no test helpers (for goroutines) and
// returns its answer with the body read.
func rawDo(method, u string, body []byte, hdr map[string]string) (*http.Response, []byte, error) {
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	if body == nil {
		req.Body, req.ContentLength = http.NoBody, 0
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := sweepClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, b, err
}

// TestResumeRacingExpiry: sixty clients each run three chunked uploads
// that stop after their first chunk for about the idle timeout (1.5-2.6 s
// against upload_idle_timeout 2s, GC every second), asking where the
// session stands on the way, then send the rest from there and wait about
// as long again before they commit. Expiry races every resume and every
// commit. Each step is answered within 45 s; an expired session answers
// 404 BLOB_UPLOAD_UNKNOWN at whichever step meets it, and the client's
// fresh push then succeeds; a session still known reports every byte its
// 202s acknowledged, no more, no less; a 201 means the blob is served
// whole; no 5xx; and once all is done, nothing is left in the uploads
// folder.
//
// On two replicas (S3 and PostgreSQL) each step goes to either replica,
// so a session resumes and commits on the one that did not take its
// last chunk.
func TestResumeRacingExpiry(t *testing.T) {
	const lives = "\t\tupload_ttl 30s\n\t\tupload_idle_timeout 2s\n\t\tgc_interval 1s\n\t\tgc_grace 1s\n"
	t.Run("single node", func(t *testing.T) {
		needBinary(t)
		dataDir := filepath.Join(t.TempDir(), "data")
		s := siteServer(t, dataDir, "\toci_registry {\n\t\tstorage "+strconv.Quote(dataDir)+"\n"+lives+"\t}", 0)
		resumeRacingExpiry(t, []*server{s}, func() bool {
			des, _ := os.ReadDir(filepath.Join(dataDir, "uploads"))
			return len(des) == 0
		})
	})
	t.Run("replicas", func(t *testing.T) {
		c := startCluster(t, 2, lives, nil)
		resumeRacingExpiry(t, c.replicas, func() bool {
			_, uploads := c.s3.Keys(t, c.bucket, "")
			return len(uploads) == 0
		})
	})
}

// resumeRacingExpiry runs the drill against servers (each request to any
// of them); gone says whether no session's bytes are left.
func resumeRacingExpiry(t *testing.T, servers []*server, gone func() bool) {
	pick := func() *server { return servers[rand.IntN(len(servers))] }

	var (
		mu      sync.Mutex
		got     = map[string]int{}
		bad     []string
		slowest time.Duration
		wg      sync.WaitGroup
	)
	note := func(what string) {
		mu.Lock()
		got[what]++
		mu.Unlock()
	}
	wrong := func(format string, args ...any) {
		mu.Lock()
		bad = append(bad, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	// step sends one request of a session; it reports the answer, or nil
	// (and a rule broken) for a 5xx, no answer, or one past the bound.
	step := func(what, method, u string, body []byte, hdr map[string]string) (*http.Response, []byte) {
		start := time.Now()
		resp, b, err := rawDo(method, u, body, hdr)
		took := time.Since(start)
		mu.Lock()
		slowest = max(slowest, took)
		mu.Unlock()
		switch {
		case err != nil:
			wrong("%s: %v after %s", what, err, took.Round(time.Millisecond))
			return nil, nil
		case took > sweepBound:
			wrong("%s: answered after %s", what, took.Round(time.Millisecond))
		case resp.StatusCode >= 500:
			wrong("%s: %s %.200s", what, resp.Status, b)
			return nil, nil
		}
		note(fmt.Sprintf("%s %d", what, resp.StatusCode))
		return resp, b
	}
	expired := func(resp *http.Response, b []byte) bool {
		return resp.StatusCode == http.StatusNotFound && bytes.Contains(b, []byte("BLOB_UPLOAD_UNKNOWN"))
	}
	next := func(resp *http.Response) string {
		u, err := url.Parse(pick().url("/"))
		if err != nil {
			return ""
		}
		l, err := u.Parse(resp.Header.Get("Location"))
		if err != nil {
			return ""
		}
		return l.String()
	}

	for c := range 60 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range 3 {
				repo := fmt.Sprintf("expiry/c%d", c)
				data := make([]byte, 128<<10+rand.IntN(128<<10))
				for i := range data {
					data[i] = byte(rand.Uint32())
				}
				d, half := blobDigest(data), len(data)/2
				committed := func() bool {
					resp, b, err := rawDo(http.MethodGet, pick().url("/v2/"+repo+"/blobs/"+d), nil, nil)
					if err != nil || resp.StatusCode != http.StatusOK || blobDigest(b) != d {
						wrong("c%d/%d: blob committed with 201, then GET: %v %v, %d bytes", c, n, err, resp, len(b))
						return false
					}
					return true
				}
				fresh := func() {
					resp, b := step("fresh push", http.MethodPost, pick().url("/v2/"+repo+"/blobs/uploads/?digest="+d), data, map[string]string{"Content-Type": "application/octet-stream"})
					if resp != nil && resp.StatusCode != http.StatusCreated {
						wrong("c%d/%d: fresh push after expiry: %s %.200s", c, n, resp.Status, b)
					} else if resp != nil {
						committed()
					}
				}
				resp, b := step("start", http.MethodPost, pick().url("/v2/"+repo+"/blobs/uploads/"), nil, nil)
				if resp == nil || resp.StatusCode != http.StatusAccepted {
					wrong("c%d/%d: start: %v %.200s", c, n, resp, b)
					return
				}
				resp, b = step("first chunk", http.MethodPatch, next(resp), data[:half], map[string]string{
					"Content-Type": "application/octet-stream", "Content-Range": fmt.Sprintf("0-%d", half-1)})
				if resp == nil || resp.StatusCode != http.StatusAccepted {
					wrong("c%d/%d: first chunk: %v %.200s", c, n, resp, b)
					return
				}
				loc := next(resp)
				// About the idle timeout since the last chunk, split
				// between before the status and before the next chunk.
				idle := time.Duration(1500+rand.IntN(1100)) * time.Millisecond
				split := time.Duration(rand.Int64N(int64(idle)))
				time.Sleep(split)

				resp, b = step("status", http.MethodGet, loc, nil, nil)
				if resp == nil {
					return
				}
				if expired(resp, b) {
					fresh()
					continue
				}
				if resp.StatusCode != http.StatusNoContent {
					wrong("c%d/%d: status: %s %.200s", c, n, resp.Status, b)
					return
				}
				_, end, _ := strings.Cut(resp.Header.Get("Range"), "-")
				if off, err := strconv.Atoi(end); err != nil || off+1 != half {
					wrong("c%d/%d: status says Range %q after %d bytes acknowledged", c, n, resp.Header.Get("Range"), half)
					return
				}
				time.Sleep(idle - split)
				resp, b = step("second chunk", http.MethodPatch, next(resp), data[half:], map[string]string{
					"Content-Type": "application/octet-stream", "Content-Range": fmt.Sprintf("%d-%d", half, len(data)-1)})
				if resp == nil {
					return
				}
				if expired(resp, b) {
					fresh()
					continue
				}
				if resp.StatusCode != http.StatusAccepted {
					wrong("c%d/%d: second chunk: %s %.200s", c, n, resp.Status, b)
					return
				}
				u := next(resp)
				sep := "?"
				if strings.Contains(u, "?") {
					sep = "&"
				}
				time.Sleep(time.Duration(1500+rand.IntN(1100)) * time.Millisecond)
				resp, b = step("commit", http.MethodPut, u+sep+"digest="+d, nil, nil)
				switch {
				case resp == nil:
				case expired(resp, b):
					fresh()
				case resp.StatusCode == http.StatusCreated:
					committed()
				default:
					wrong("c%d/%d: commit: %s %.200s", c, n, resp.Status, b)
				}
			}
		}()
	}
	wg.Wait()
	mu.Lock()
	t.Logf("answers: %v; slowest %s", got, slowest.Round(time.Millisecond))
	for i, w := range bad {
		if i == 10 {
			t.Errorf("... and %d more", len(bad)-10)
			break
		}
		t.Errorf("broke the rules: %s", w)
	}
	mu.Unlock()
	waitFor(t, 15*time.Second, "no session's bytes to be left", gone)
	for _, s := range servers {
		s.alive("at the end")
	}
}
