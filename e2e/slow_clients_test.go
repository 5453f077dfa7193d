package e2e

import (
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestSlowClients holds hundreds of connections the way slow or hostile
// clients do: request headers sent a line at a time (slowloris), upload
// bodies trickling a byte a second, and idle keep-alives, while a client
// of normal speed pushes and pulls. The normal client is served
// throughout, at its usual latency; the server's descriptors and memory
// stay bounded; once the slow clients go, the server's descriptors come
// back to where they were.
func TestSlowClients(t *testing.T) {
	needBinary(t)
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	dataDir := filepath.Join(t.TempDir(), "data")
	s := siteServer(t, dataDir, "\toci_registry {\n\t\tstorage "+strconv.Quote(dataDir)+"\n\t}", 0)
	fdsBefore, rssBefore := fdCount(t, s), rssMiB(t, s.cmd.Process.Pid)

	const each = 300
	var mu sync.Mutex
	var conns []net.Conn
	dial := func() net.Conn {
		c, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Errorf("dial: %v", err)
			return nil
		}
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
		return c
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	trickle := func(c net.Conn, head string, drip func(i int) string) {
		defer wg.Done()
		if _, err := c.Write([]byte(head)); err != nil {
			return
		}
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(time.Second):
			}
			if _, err := c.Write([]byte(drip(i))); err != nil {
				return
			}
		}
	}
	for i := range each {
		// Slowloris: a header line a second, never the blank line.
		if c := dial(); c != nil {
			wg.Add(1)
			go trickle(c, "GET /v2/ HTTP/1.1\r\nHost: x\r\n", func(i int) string { return fmt.Sprintf("X-%d: y\r\n", i) })
		}
		// A chunk's body at a byte a second, on a session of its own.
		resp := do(t, http.MethodPost, s.url(fmt.Sprintf("/v2/slow/r%d/blobs/uploads/", i)), nil, nil)
		if resp.StatusCode == http.StatusAccepted {
			if c := dial(); c != nil {
				wg.Add(1)
				go trickle(c, "PATCH "+location(t, s, resp).RequestURI()+" HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n",
					func(int) string { return "z" })
			}
		}
		// An idle keep-alive after one request.
		if c := dial(); c != nil {
			if _, err := c.Write([]byte("GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
				t.Error(err)
			}
		}
	}
	time.Sleep(3 * time.Second)
	fdsDuring, rssDuring := fdCount(t, s), rssMiB(t, s.cmd.Process.Pid)

	// A client of normal speed meanwhile.
	var slowest time.Duration
	for range 20 {
		start := time.Now()
		b := randomBytes(t, 256<<10)
		d := pushBlob(t, s, "fast/app", b)
		getBlob(t, s, "fast/app", d, b)
		slowest = max(slowest, time.Since(start))
	}
	t.Logf("%d slow connections: fds %d -> %d, RSS %.0f -> %.0f MiB; a normal client's push+pull of 256 KiB: slowest %s",
		len(conns), fdsBefore, fdsDuring, rssBefore, rssDuring, slowest.Round(time.Millisecond))
	if slowest > 2*time.Second {
		t.Errorf("the normal client waited %s beside the slow ones", slowest)
	}
	if rssDuring-rssBefore > 200 {
		t.Errorf("RSS grew by %.0f MiB for %d slow connections", rssDuring-rssBefore, len(conns))
	}
	close(stop)
	mu.Lock()
	for _, c := range conns {
		c.Close()
	}
	mu.Unlock()
	wg.Wait()
	waitFor(t, 10*time.Second, "the server's descriptors to come back", func() bool { return fdCount(t, s) <= fdsBefore+8 })
	s.alive("after the slow clients")
}
