//go:build linux

package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestReplicaStalledPushesMemory: 200 monolithic pushes into a replica
// on S3, each declaring 64 MiB and sending 9 MiB (more than an S3 part)
// before it stalls, then 100 chunked pushes whose PATCH does the same,
// then 100 monolithic pushes of unknown length (a chunked body).
// What the replica holds for them must stay bounded: it held a part
// buffer (8 MiB) for each monolithic one, 1.6 GiB in all, and for each
// chunked one, 775 MiB in all (their parts are now filled on disk).
func TestReplicaStalledPushesMemory(t *testing.T) {
	c := startCluster(t, 1, "", nil)
	r := c.replicas[0]
	pid := r.cmd.Process.Pid
	base := rssMiB(t, pid)
	heads := make([]string, 200)
	for i := range heads {
		d := blobDigest([]byte(fmt.Sprint(i)))
		heads[i] = fmt.Sprintf("POST /v2/stalled/app/blobs/uploads/?digest=%s HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", d, 64<<20)
	}
	rss, _ := stalledRequests(t, r, heads, false)
	grew := rss - base
	t.Logf("RSS grew by %.0f MiB with %d stalled monolithic pushes", grew, len(heads))
	if grew > 150 {
		t.Errorf("RSS grew by %.0f MiB with %d stalled monolithic pushes, want <= 150", grew, len(heads))
	}

	heads = make([]string, 100) // the sessions one client may hold
	for i := range heads {
		resp := do(t, http.MethodPost, r.url("/v2/stalled/app/blobs/uploads/"), nil, nil)
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("session %d: %s", i, resp.Status)
		}
		heads[i] = fmt.Sprintf("PATCH %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", uploadPath(t, resp.Header.Get("Location")), 64<<20)
	}
	base = rssMiB(t, pid)
	rss, files := stalledRequests(t, r, heads, false)
	grew = rss - base
	t.Logf("RSS grew by %.0f MiB with %d stalled chunked pushes, which held %d part files", grew, len(heads), files)
	if files < len(heads) {
		t.Errorf("%d stalled chunked pushes held %d part files: they did not reach the store", len(heads), files)
	}
	if grew > 150 {
		t.Errorf("RSS grew by %.0f MiB with %d stalled chunked pushes, want <= 150", grew, len(heads))
	}

	// A monolithic push of unknown length (a chunked body) fills its
	// first part before it knows whether the blob is one part or many.
	heads = make([]string, 100)
	for i := range heads {
		d := blobDigest([]byte(fmt.Sprint("unknown length ", i)))
		heads[i] = fmt.Sprintf("POST /v2/stalled/app/blobs/uploads/?digest=%s HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n", d)
	}
	base = rssMiB(t, pid)
	rss, files = stalledRequests(t, r, heads, true)
	grew = rss - base
	t.Logf("RSS grew by %.0f MiB with %d stalled pushes of unknown length, which held %d part files", grew, len(heads), files)
	if files < len(heads) {
		t.Errorf("%d stalled pushes of unknown length held %d part files: they did not reach the store", len(heads), files)
	}
	if grew > 150 {
		t.Errorf("RSS grew by %.0f MiB with %d stalled pushes of unknown length, want <= 150", grew, len(heads))
	}
}

// partFiles counts the part files (s3/partfile.go) process pid holds open.
func partFiles(t testing.TB, pid int) int {
	t.Helper()
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	fds, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fd := range fds {
		if target, err := os.Readlink(dir + "/" + fd.Name()); err == nil && strings.Contains(target, "caddy-oci-s3-part-") {
			n++
		}
	}
	return n
}

// stalledRequests sends each request head to s on its own connection
// with 9 MiB of its body (in the chunked transfer coding if chunked), and
// returns the server's RSS and the part files it holds once they all
// stalled there; then it closes them.
func stalledRequests(t *testing.T, s *server, heads []string, chunked bool) (float64, int) {
	t.Helper()
	chunk := bytes.Repeat([]byte("s"), 1<<20)
	var wg sync.WaitGroup
	conns := make(chan net.Conn, len(heads))
	for _, head := range heads {
		wg.Go(func() {
			conn, err := net.Dial("tcp", s.addr)
			if err != nil {
				t.Error(err)
				return
			}
			conns <- conn
			io.WriteString(conn, head)
			for range 9 {
				if chunked {
					if _, err := fmt.Fprintf(conn, "%x\r\n", len(chunk)); err != nil {
						return
					}
				}
				if _, err := conn.Write(chunk); err != nil {
					return
				}
				if chunked {
					if _, err := io.WriteString(conn, "\r\n"); err != nil {
						return
					}
				}
			}
		})
	}
	wg.Wait()
	time.Sleep(5 * time.Second)
	rss, files := rssMiB(t, s.cmd.Process.Pid), partFiles(t, s.cmd.Process.Pid)
	close(conns)
	for conn := range conns {
		conn.Close()
	}
	return rss, files
}
