package caddymodule

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// getOn sends GET /v2/ on conn and returns the response.
func getOn(t *testing.T, conn net.Conn, r *bufio.Reader, addr string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/v2/", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := req.Write(conn); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(r, req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(resp.Body); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

// TestReplacedConfigClosesConnections: while a newer config is
// provisioned, the running config's HTTP/1 responses close their
// connection; when that config goes away again (a failed reload, a
// validate), keep-alive is back.
func TestReplacedConfigClosesConnections(t *testing.T) {
	addr := freeAddr(t)
	if err := caddy.Load(config(t, addr, t.TempDir(), 0), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopCaddy(t) })

	dial := func() (net.Conn, *bufio.Reader) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn, bufio.NewReader(conn)
	}
	conn, r := dial()
	if resp := getOn(t, conn, r, addr); resp.Close {
		t.Fatal("Connection: close before any reload")
	}

	// A newer config is provisioned (what Provision of its oci app does).
	newer := new(App)
	newer.enter()
	resp := getOn(t, conn, r, addr)
	if !resp.Close { // ReadResponse takes Connection: close out of the header into Close
		t.Error("response of the replaced config keeps the connection open")
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := r.ReadByte(); err == nil {
		t.Errorf("server kept the connection open after Connection: close: read %q", b)
	}

	// The newer config is given up: the running one keeps connections again.
	newer.leave()
	conn, r = dial()
	for i := 0; i < 2; i++ {
		if resp := getOn(t, conn, r, addr); resp.Close {
			t.Fatalf("request %d: Connection: close after the newer config went away", i)
		}
	}
}

// TestReloadWaitsDrain: a reload keeps the old config serving for
// ReloadDrain after the new one started; a first start does not wait.
func TestReloadWaitsDrain(t *testing.T) {
	addr, dir := freeAddr(t), t.TempDir()
	start := time.Now()
	if err := caddy.Load(config(t, addr, dir, 0), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopCaddy(t) })
	first := time.Since(start)

	start = time.Now()
	if err := caddy.Load(config(t, addr, dir, 1<<20), true); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < ReloadDrain {
		t.Errorf("reload took %s, want at least the drain %s", d, ReloadDrain)
	}
	if first >= ReloadDrain {
		t.Logf("first start took %s (a busy machine?)", first)
	}
	ping(t, addr)
}
