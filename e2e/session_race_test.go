package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/internal/trickle"
)

// tricklePatch sends a PATCH whose body arrives one byte at a time, every
// interval: often enough that no idle timeout of the server ends it (a
// slow client, or a slowloris), or, with a long interval, a body that has
// stalled. stop ends the body; the PATCH's answer comes on the channel.
func tricklePatch(t *testing.T, u string, every time.Duration) (stop func(), answer <-chan *http.Response) {
	t.Helper()
	pr, stop := trickle.New(every)
	req, err := http.NewRequest(http.MethodPatch, u, pr)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = -1
	req.Header.Set("Content-Type", "application/octet-stream")
	ch := make(chan *http.Response, 1)
	go func() {
		resp, err := (&http.Client{Timeout: 2 * time.Minute}).Do(req)
		if err != nil {
			ch <- nil
			return
		}
		_, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		ch <- resp
	}()
	return stop, ch
}

// openSession starts an upload session in repo and returns its URL.
func openSession(t *testing.T, s *server, repo string) string {
	t.Helper()
	resp := do(t, http.MethodPost, s.url("/v2/"+repo+"/blobs/uploads/"), nil, nil)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST upload: %s", resp.Status)
	}
	return location(t, s, resp).String()
}

// quick sends one request that must be answered within 15 s: an operation
// on a session must never wait for another client's body.
func quick(t *testing.T, method, u string, body []byte) (*http.Response, error) {
	t.Helper()
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req, _ = http.NewRequest(method, u, bytes.NewReader(body))
	}
	resp, err := (&http.Client{Timeout: 15 * time.Second}).Do(req)
	if err != nil {
		return nil, err
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(b))
	return resp, nil
}

// TestSessionRaces drills a client that misbehaves on its own upload
// session while one of its PATCHes trickles in: a second PATCH, a PUT
// that commits and a DELETE each get a prompt answer (never a hang behind
// the slow body, never a 500), the DELETE ends the trickling PATCH, and
// nothing of the session is left visible or on disk.
func TestSessionRaces(t *testing.T) {
	needBinary(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	s := siteServer(t, dataDir, fmt.Sprintf("\toci_registry {\n\t\tstorage %s\n\t}", strconv.Quote(dataDir)), 0)

	session := openSession(t, s, "team/race")
	first := []byte("first chunk")
	resp := do(t, http.MethodPatch, session, first, map[string]string{"Content-Range": "0-" + strconv.Itoa(len(first)-1)})
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("first chunk: %s", resp.Status)
	}
	session = location(t, s, resp).String()
	stop, answer := tricklePatch(t, session, 100*time.Millisecond)
	defer stop()
	time.Sleep(500 * time.Millisecond) // the trickle holds the session

	t.Run("second PATCH", func(t *testing.T) {
		resp, err := quick(t, http.MethodPatch, session, []byte("second"))
		if err != nil {
			t.Fatalf("PATCH beside a trickling one: %v", err)
		}
		if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
			t.Errorf("PATCH beside a trickling one: %s, want 416", resp.Status)
		}
	})
	t.Run("PUT commit", func(t *testing.T) {
		u, _ := url.Parse(session)
		q := u.Query()
		q.Set("digest", blobDigest(first))
		u.RawQuery = q.Encode()
		resp, err := quick(t, http.MethodPut, u.String(), nil)
		if err != nil {
			t.Fatalf("PUT while a PATCH trickles: %v", err)
		}
		if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
			t.Errorf("PUT while a PATCH trickles: %s %q, want 416", resp.Status, readAll(t, resp))
		}
		headBlob(t, s, "team/race", blobDigest(first), http.StatusNotFound, "after the refused commit")
	})
	t.Run("DELETE", func(t *testing.T) {
		resp, err := quick(t, http.MethodDelete, session, nil)
		if err != nil {
			t.Fatalf("DELETE while a PATCH trickles: %v", err)
		}
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("DELETE while a PATCH trickles: %s %q, want 204", resp.Status, readAll(t, resp))
		}
		select {
		case resp := <-answer:
			if resp == nil || resp.StatusCode != http.StatusNotFound {
				t.Errorf("the trickling PATCH after the DELETE: %v, want 404", resp)
			}
		case <-time.After(15 * time.Second):
			t.Fatal("the trickling PATCH still runs 15 s after its session was deleted")
		}
		resp, err = quick(t, http.MethodGet, session, nil)
		if err != nil || resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET the deleted session: %v %v, want 404", resp, err)
		}
		if n := uploadBytes(t, dataDir); n != 0 {
			t.Errorf("%d bytes left in uploads/ and tmp/ after the DELETE", n)
		}
	})
	stop()

	t.Run("the store still takes pushes", func(t *testing.T) {
		blob := randomBytes(t, 1<<20)
		resp := do(t, http.MethodPost, s.url("/v2/team/race/blobs/uploads/?digest="+blobDigest(blob)), blob, nil)
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("push after the races: %s", resp.Status)
		}
	})
}

// TestDeleteBesideStalledBody: a DELETE of a session whose PATCH body has
// stalled (no byte for longer than the test) answers at once and ends
// that PATCH with 404, rather than waiting for the client's next byte or
// the server's one-minute read idle timeout: the cancel interrupts the
// blocked read.
func TestDeleteBesideStalledBody(t *testing.T) {
	needBinary(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	s := siteServer(t, dataDir, fmt.Sprintf("\toci_registry {\n\t\tstorage %s\n\t}", strconv.Quote(dataDir)), 0)
	session := openSession(t, s, "team/stall")
	stop, answer := tricklePatch(t, session, time.Hour)
	defer stop()
	time.Sleep(time.Second) // the stalled PATCH holds the session

	start := time.Now()
	resp, err := quick(t, http.MethodDelete, session, nil)
	if err != nil {
		t.Fatalf("DELETE beside a stalled PATCH: %v", err)
	}
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE beside a stalled PATCH: %s %q, want 204", resp.Status, readAll(t, resp))
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("DELETE beside a stalled PATCH took %s", took)
	}
	select {
	case resp := <-answer:
		if resp == nil || resp.StatusCode != http.StatusNotFound {
			t.Errorf("the stalled PATCH after the DELETE: %v, want 404", resp)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the stalled PATCH still runs 5 s after its session was deleted")
	}
	if n := uploadBytes(t, dataDir); n != 0 {
		t.Errorf("%d bytes left in uploads/ and tmp/ after the DELETE", n)
	}
}

// TestTrickleCutByMinRate: the README's advice for registries open to
// untrusted clients - Caddy's `timeouts { read_body_idle <d> <bytes/s> }` -
// ends a PATCH that trickles below the rate (no idle timeout alone would),
// and the session stays usable at its last complete chunk.
func TestTrickleCutByMinRate(t *testing.T) {
	s, _ := reloadServer(t, "\tservers {\n\t\ttimeouts {\n\t\t\tread_body_idle 2s 1024\n\t\t}\n\t}")
	session := openSession(t, s, "team/slow")
	stop, answer := tricklePatch(t, session, 100*time.Millisecond)
	defer stop()
	select {
	case <-answer: // cut: an error, or an answer once the body failed
	case <-time.After(20 * time.Second):
		t.Fatal("a PATCH at 10 bytes/s still runs after 20 s under a 1024 bytes/s minimum")
	}
	resp, err := quick(t, http.MethodGet, session, nil)
	if err != nil || resp.StatusCode != http.StatusNoContent || resp.Header.Get("Range") != "0-0" {
		t.Fatalf("the session after the cut: %v %v, want 204 with Range 0-0", resp, err)
	}
}

// TestReloadBesideTrickle: a PATCH that trickles in does not hold up a
// config reload, and the session works after it.
func TestReloadBesideTrickle(t *testing.T) {
	s, caddyfile := reloadServer(t, "")
	session := openSession(t, s, "team/slow")
	stop, answer := tricklePatch(t, session, 100*time.Millisecond)
	defer stop()
	time.Sleep(300 * time.Millisecond)
	done := make(chan struct{})
	start := time.Now()
	go func() {
		s.reload(t, caddyfile)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("a reload still waits after 30 s behind one trickling PATCH")
	}
	t.Logf("reload took %s", time.Since(start))
	blob := randomBytes(t, 1<<20)
	if resp := do(t, http.MethodPost, s.url("/v2/team/slow/blobs/uploads/?digest="+blobDigest(blob)), blob, nil); resp.StatusCode != http.StatusCreated {
		t.Fatalf("push after the reload: %s", resp.Status)
	}
	stop()
	select {
	case <-answer:
	case <-time.After(30 * time.Second):
		t.Fatal("the trickling PATCH got no answer after its body ended")
	}
}

// TestStopBesideTrickle: with the grace_period the README asks for,
// SIGTERM ends the process in bounded time though a PATCH trickles in
// (Caddy's default waits for every request for ever), and the session
// resumes at its last complete chunk after the restart.
func TestStopBesideTrickle(t *testing.T) {
	s, _ := reloadServer(t, "	grace_period 3s")
	session := openSession(t, s, "team/slow")
	stop, _ := tricklePatch(t, session, 100*time.Millisecond)
	defer stop()
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.done:
		t.Logf("stopped in %s", time.Since(start))
	case <-time.After(30 * time.Second):
		t.Fatal("still running 30 s after SIGTERM, behind one trickling PATCH")
	}
	stop()
	s.start()
	resp, err := quick(t, http.MethodGet, session, nil)
	if err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("the session after the restart: %v %v, want 204", resp, err)
	}
}
