package caddymodule

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// oci_registry answers every path a lenient server might read as an API
// path, and those it cannot parse get 404 in the spec's envelope: none
// falls through to the next handler (a file server, a proxy), which could
// serve it as the API without the registry's name checks and auth.
func TestRegistryKeepsAPISpellings(t *testing.T) {
	addr := freeAddr(t)
	cfg := adaptFront(t, `{
	admin off
	log {
		level ERROR
	}
}
http://`+addr+` {
	route {
		oci_registry {
			storage `+t.TempDir()+`
			mirror docker.io {
				upstream http://127.0.0.1:1
			}
		}
		respond "next handler" 200
	}
}`)
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	for _, p := range []string{
		"//v2/",
		"//v2/app/manifests/v1",
		"/./v2/_catalog",
		"/x/../v2/app/manifests/v1",
		"/V2/app/manifests/v1",
		"/v2%5Capp/manifests/v1",
		"/%5Cv2/app/manifests/v1",
		"/v2;x/app/manifests/v1",
		"/v2%00/app/manifests/v1",
		"/%2576%2532/app/manifests/v1",
		"/docker.io//v2/library/app/manifests/v1",
		"/Docker.io/v2/library/app/manifests/v1",
		"/v2/app/manifests/v1/",
		"/v2/..",
	} {
		resp, body := rawGet(t, addr, p)
		if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), `"errors"`) || strings.Contains(string(body), "next handler") {
			t.Errorf("GET %s: %d %s; want the registry's 404 envelope", p, resp.StatusCode, body)
		}
	}
	// Other paths still reach the next handler.
	if resp, body := rawGet(t, addr, "/index.html"); resp.StatusCode != http.StatusOK || string(body) != "next handler" {
		t.Errorf("GET /index.html: %d %s", resp.StatusCode, body)
	}
}

// rawGet sends GET target over a new connection exactly as written (Go's
// client cleans some spellings).
func rawGet(t *testing.T, addr, target string) (*http.Response, []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", target, addr); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}
