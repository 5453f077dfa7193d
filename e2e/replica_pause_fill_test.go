package e2e

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReplicaPausedMidFill: the replica filling a cold mirrored blob is
// stopped (SIGSTOP: a frozen VM, a long pause) in the middle of the fill,
// long enough for its fill lease (30 s) to expire; a client on the other
// replica waits it out and that replica fills and commits the blob. Then
// the stopped replica is woken with its stale lease and its fill half
// done: whatever it does then (finish, fail, clean up), the committed
// blob stays whole and recorded, through both replicas, seconds later;
// no fill lease stays held; and the woken replica's own client gets the
// blob or an error, never other bytes.
func TestReplicaPausedMidFill(t *testing.T) {
	blob := randomBytes(t, 8<<20)
	up, d := slowBlobUpstream(t, blob, 256<<10, 100*time.Millisecond) // about 3 s
	c := startCluster(t, 2, "\t\tmirror docker.io {\n\t\t\tupstream "+up.URL+"\n\t\t}\n", nil)
	a, b := c.replicas[0], c.replicas[1]
	path := "/v2/docker.io/library/app/blobs/" + d

	type answer struct {
		status string
		body   []byte
		err    error
	}
	first := make(chan answer, 1)
	go func() {
		resp, err := (&http.Client{Timeout: 2 * time.Minute}).Get(a.url(path))
		if err != nil {
			first <- answer{err: err}
			return
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		first <- answer{status: resp.Status, body: body, err: err}
	}()
	time.Sleep(1200 * time.Millisecond)
	if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	woken := false
	defer func() {
		if !woken {
			_ = a.cmd.Process.Signal(syscall.SIGCONT)
		}
	}()
	stopped := time.Now()

	// The other replica waits out the stopped filler's lease, then fills
	// (or answers 503 with Retry-After, and the client asks again).
	var statuses []string
	var got []byte
	for attempt := 0; attempt < 3 && got == nil; attempt++ {
		resp, err := (&http.Client{Timeout: 2 * time.Minute}).Get(b.url(path))
		if err != nil {
			t.Fatalf("GET on the other replica: %v", err)
		}
		raw, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		statuses = append(statuses, resp.Status)
		switch {
		case err == nil && resp.StatusCode == http.StatusOK:
			if !bytes.Equal(raw, blob) {
				t.Fatalf("the other replica answered 200 with %d bytes that are not the blob", len(raw))
			}
			got = raw
		case resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "":
		default:
			t.Fatalf("GET on the other replica while the filler is stopped: %s %s", resp.Status, raw)
		}
	}
	if got == nil {
		t.Fatalf("the other replica never served the blob: %v", statuses)
	}
	t.Logf("the other replica served the blob %v into the stop (answers %v)", time.Since(stopped).Round(100*time.Millisecond), statuses)
	// The fill commits once its last byte went out.
	waitFor(t, 20*time.Second, "the other replica's fill to be recorded", func() bool {
		return pgCount(t, "SELECT count(*) FROM blobs WHERE digest = $1", d) == 1
	})

	if err := a.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	woken = true
	ans := <-first
	t.Logf("the woken replica's own client: %s, %d bytes, %v", ans.status, len(ans.body), ans.err)
	if ans.err == nil && strings.HasPrefix(ans.status, "200") && !bytes.Equal(ans.body, blob) {
		t.Errorf("the woken replica's client got 200 with %d bytes that are not the blob", len(ans.body))
	}
	// Whatever the woken replica's fill does with its stale lease, it does
	// within a few seconds.
	time.Sleep(5 * time.Second)
	a.alive("woken after its fill lease expired")
	for _, s := range []*server{a, b, c.front} {
		resp := do(t, http.MethodGet, s.url(path), nil, nil)
		if body := readAll(t, resp); resp.StatusCode != http.StatusOK || !bytes.Equal(body, blob) {
			t.Errorf("GET %s after the wake: %s, %d bytes, whole %v", s.addr, resp.Status, len(body), bytes.Equal(body, blob))
		}
	}
	if n := pgCount(t, "SELECT count(*) FROM blobs WHERE digest = $1 AND deleting IS NULL", d); n != 1 {
		t.Errorf("after the wake the blob is recorded %d times", n)
	}
	hex := strings.TrimPrefix(d, "sha256:")
	if objects, _ := c.s3.Keys(t, c.bucket, "registry/blobs/sha256/"+hex[:2]+"/"+hex); len(objects) != 1 {
		t.Errorf("after the wake the bucket holds %v for the blob", objects)
	}
	if n := pgCount(t, "SELECT count(*) FROM leases WHERE key = $1 AND expires > now()", "fill/"+d); n != 0 {
		t.Errorf("a fill lease of the blob is held after the wake")
	}
}
