package caddymodule

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// TestFrontNoUpgradeOnAPI: the registry API never switches protocols, so
// oci_front passes a request on an API path to the backend without its
// Upgrade, as a plain request, whatever the backend would accept. Before, with a backend answering 101,
// the connection became a raw tunnel to the backend (measured against
// the built binary): every later request on it reached the backend
// unmapped, unchecked (an API key of this server in it included), and
// its answers came back unrewritten.
func TestFrontNoUpgradeOnAPI(t *testing.T) {
	upgraded := make(chan string, 4)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "" {
			w.WriteHeader(http.StatusOK)
			return
		}
		upgraded <- r.URL.Path
		c, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		_ = rw.Flush()
		_, _ = io.Copy(io.Discard, rw)
	}))
	t.Cleanup(backend.Close)
	addr := freeAddr(t)
	cfg := adaptFront(t, `{
	admin off
	log {
		level ERROR
	}
}
http://`+addr+` {
	oci_front {
		mirror docker.io {
			default
		}
	}
	reverse_proxy `+backend.URL+`
}`)
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopCaddy(t) })
	for _, path := range []string{"/v2/", "/v2/debian/manifests/latest", "/v2/_catalog", "/docker.io/v2/debian/tags/list",
		// Backends' extensions, passed on as they came but for Upgrade:
		// before, both switched protocols (measured on the binary).
		"/v2/_zot/ext/search", "/v2/_oci/ext/discover"} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: "+addr+"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		c.Close()
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			t.Errorf("Upgrade on %s: %d", path, resp.StatusCode)
		}
	}
	select {
	case p := <-upgraded:
		t.Errorf("the backend was asked to upgrade %s", p)
	default:
	}
}
