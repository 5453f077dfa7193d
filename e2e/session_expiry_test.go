package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// TestSessionsExpireBesideSlowClients runs the server, single node and
// replica, with short session lives (upload_ttl 8s, upload_idle_timeout
// 3s, GC every second) and
// three sessions: one left idle after its first chunk, one that sends a
// chunk every second, and one whose PATCH trickles a byte every 100 ms
// for ever (a slowloris body). The idle one expires: 404
// BLOB_UPLOAD_UNKNOWN and its file gone. The busy one outlives the idle
// timeout and commits. The trickling one ends by upload_ttl, however
// busy: its PATCH is answered or cut, the session is unknown after, its
// bytes are gone. Before, the trickling PATCH ran on past 30 s: expiry
// leaves a session alone while a request writes it, so a body that never
// ends kept its session, and the space and upload slot it holds, for
// ever.
func TestSessionsExpireBesideSlowClients(t *testing.T) {
	const lives = "\t\tupload_ttl 8s\n\t\tupload_idle_timeout 3s\n\t\tgc_interval 1s\n\t\tgc_grace 1s\n"
	t.Run("single node", func(t *testing.T) {
		needBinary(t)
		dataDir := t.TempDir()
		s := siteServer(t, dataDir, "\toci_registry {\n\t\tstorage "+strconv.Quote(dataDir)+"\n"+lives+"\t}", 0)
		expiryDrill(t, s, func() bool {
			des, _ := os.ReadDir(filepath.Join(dataDir, "uploads"))
			return len(des) == 0
		})
	})
	t.Run("replica", func(t *testing.T) {
		c := startCluster(t, 1, lives, nil)
		expiryDrill(t, c.replicas[0], func() bool {
			_, uploads := c.s3.Keys(t, c.bucket, "")
			return len(uploads) == 0
		})
	})
}

// expiryDrill runs the drill on s, whose sessions' bytes are all gone
// when gone says so.
func expiryDrill(t *testing.T, s *server, gone func() bool) {
	const repo = "team/expiry"
	chunk := randomBytes(t, 64<<10)
	idle := openSession(t, s, repo)
	resp := do(t, http.MethodPatch, idle, chunk, map[string]string{"Content-Range": fmt.Sprintf("0-%d", len(chunk)-1)})
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("first chunk of the idle session: %s", resp.Status)
	}
	idle = location(t, s, resp).String()
	trickling := openSession(t, s, repo)
	stop, answer := tricklePatch(t, trickling, 100*time.Millisecond)
	defer stop()
	start := time.Now()

	// The busy session: a chunk a second for 6 s, then its commit.
	busy := openSession(t, s, repo)
	var whole []byte
	for i := range 6 {
		b := randomBytes(t, 4096)
		resp := do(t, http.MethodPatch, busy, b, map[string]string{"Content-Range": fmt.Sprintf("%d-%d", len(whole), len(whole)+len(b)-1)})
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("chunk %d of the busy session after %s: %s %s", i, time.Since(start).Round(time.Millisecond), resp.Status, readAll(t, resp))
		}
		busy = location(t, s, resp).String()
		whole = append(whole, b...)
		time.Sleep(time.Second) // the client's pace, not a synchronisation
	}
	u := location(t, s, do(t, http.MethodGet, busy, nil, nil))
	q := u.Query()
	q.Set("digest", blobDigest(whole))
	u.RawQuery = q.Encode()
	if resp := do(t, http.MethodPut, u.String(), nil, nil); resp.StatusCode != http.StatusCreated {
		t.Fatalf("committing the busy session after %s: %s %s", time.Since(start).Round(time.Millisecond), resp.Status, readAll(t, resp))
	}

	// The idle one has expired by now (3 s idle, GC every second).
	waitFor(t, 10*time.Second, "the idle session to expire", func() bool {
		return status(http.MethodGet, idle) == http.StatusNotFound
	})
	resp = do(t, http.MethodGet, idle, nil, nil)
	if code := errorCode(t, resp); code != "BLOB_UPLOAD_UNKNOWN" {
		t.Errorf("the idle session after its timeout: code %s, want BLOB_UPLOAD_UNKNOWN", code)
	}

	// The trickling one ends with upload_ttl.
	select {
	case r := <-answer:
		if r != nil {
			t.Logf("the trickling PATCH was answered %s after %s", r.Status, time.Since(start).Round(time.Millisecond))
			if r.StatusCode < 400 {
				t.Errorf("the trickling PATCH past upload_ttl: %s, want an error", r.Status)
			}
		} else {
			t.Logf("the trickling PATCH was cut after %s", time.Since(start).Round(time.Millisecond))
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("a PATCH still trickles %s after its session started, with upload_ttl 8s", time.Since(start).Round(time.Second))
	}
	waitFor(t, 10*time.Second, "the trickling session to be unknown", func() bool {
		return status(http.MethodGet, trickling) == http.StatusNotFound
	})
	waitFor(t, 10*time.Second, "the expired sessions' bytes to go", gone)
}
