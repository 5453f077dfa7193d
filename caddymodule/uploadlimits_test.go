package caddymodule

import (
	"net/http"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// TestUploadLimitsThroughCaddy: the limit of sessions per client applies
// in a running Caddy, to the client address Caddy determines: behind a
// trusted proxy, the address the proxy forwarded.
func TestUploadLimitsThroughCaddy(t *testing.T) {
	addr := freeAddr(t)
	cfg := string(config(t, addr, t.TempDir(), 0))
	cfg = strings.Replace(cfg, `"handler":"oci_registry"`, `"handler":"oci_registry","max_uploads_per_client":2`, 1)
	cfg = strings.Replace(cfg, `"listen":`, `"trusted_proxies":{"source":"static","ranges":["127.0.0.1/32"]},"listen":`, 1)
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopCaddy(t) })
	open := func(client string) int {
		req, _ := http.NewRequest("POST", "http://"+addr+"/v2/app/blobs/uploads/", nil)
		req.Header.Set("X-Forwarded-For", client)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, want := range []int{http.StatusAccepted, http.StatusAccepted, http.StatusTooManyRequests} {
		if got := open("192.0.2.1"); got != want {
			t.Fatalf("session of 192.0.2.1: %d, want %d", got, want)
		}
	}
	if got := open("192.0.2.2"); got != http.StatusAccepted {
		t.Fatalf("session of another client: %d", got)
	}
}
