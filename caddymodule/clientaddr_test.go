package caddymodule

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// TestWarnsLenientTrustedProxies: a server that trusts proxies but not
// strictly takes each client's address from what the client wrote in
// X-Forwarded-For, so every per-client bound counts whatever address a
// client names (see warnLenientProxies). oci_registry and oci_front say
// so (once a process) when such a request comes; with
// trusted_proxies_strict, or with no trusted proxies, they do not.
// Before, nothing was logged.
func TestWarnsLenientTrustedProxies(t *testing.T) {
	for _, tc := range []struct {
		name    string
		server  map[string]any
		handler map[string]any
		warn    bool
	}{
		{"registry, lenient", map[string]any{"trusted_proxies": map[string]any{"source": "static", "ranges": []string{"127.0.0.1/32"}}},
			map[string]any{"handler": "oci_registry"}, true},
		{"front, lenient", map[string]any{"trusted_proxies": map[string]any{"source": "static", "ranges": []string{"127.0.0.1/32"}}},
			map[string]any{"handler": "oci_front", "mirrors": []any{map[string]any{"prefix": "docker.io", "default": true}}}, true},
		{"registry, strict", map[string]any{"trusted_proxies": map[string]any{"source": "static", "ranges": []string{"127.0.0.1/32"}}, "trusted_proxies_strict": 1},
			map[string]any{"handler": "oci_registry"}, false},
		{"registry, no proxies", map[string]any{}, map[string]any{"handler": "oci_registry"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := freeAddr(t)
			lenientProxiesWarned.Store(false)
			logFile := loadLoggingWarnings(t, addr, tc.server, tc.handler)
			req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/v2/", nil)
			req.Header.Set("X-Forwarded-For", "10.0.0.1, 192.0.2.1")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			stopCaddy(t)
			b, _ := os.ReadFile(logFile)
			if got := strings.Contains(string(b), "trusted_proxies_strict"); got != tc.warn {
				t.Errorf("warned: %v, want %v; log:\n%s", got, tc.warn, b)
			}
		})
	}
}

// TestWarnsNoClientAddress: a request on a Unix socket of a server
// without trusted_proxies_unix has no client address, so every client
// there spends one set of per-client bounds (on the binary, one client's
// five wrong passwords made every other user's first login 429). The
// registry and the front say so once a process; with trusted_proxies_unix
// and the proxy's X-Forwarded-For, or on TCP, they do not. Before,
// nothing was logged.
func TestWarnsNoClientAddress(t *testing.T) {
	front := map[string]any{"handler": "oci_front", "mirrors": []any{map[string]any{"prefix": "docker.io", "default": true}}}
	for _, tc := range []struct {
		name    string
		unix    bool
		server  map[string]any
		handler map[string]any
		xff     string
		warn    bool
	}{
		{"registry, unix", true, nil, map[string]any{"handler": "oci_registry"}, "", true},
		{"front, unix", true, nil, front, "", true},
		{"registry, unix, proxy sends no address", true, map[string]any{"trusted_proxies_unix": true}, map[string]any{"handler": "oci_registry"}, "", true},
		{"registry, unix, trusted proxy", true, map[string]any{"trusted_proxies_unix": true}, map[string]any{"handler": "oci_registry"}, "192.0.2.1", false},
		{"registry, tcp", false, nil, map[string]any{"handler": "oci_registry"}, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			listen, client := freeAddr(t), http.DefaultClient
			if tc.unix {
				sock := filepath.Join(dir, "s")
				listen = "unix/" + sock
				client = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					return (&net.Dialer{}).DialContext(ctx, "unix", sock)
				}}}
			}
			noClientAddressWarned.Store(false)
			logFile := loadLoggingWarnings(t, listen, tc.server, tc.handler)
			host := listen
			if tc.unix {
				host = "registry"
			}
			req, _ := http.NewRequest(http.MethodGet, "http://"+host+"/v2/", nil)
			if tc.xff != "" {
				req.Header.Set("X-Forwarded-For", tc.xff)
			}
			resp, err := client.Do(req)
			if err != nil {
				stopCaddy(t)
				t.Fatal(err)
			}
			resp.Body.Close()
			stopCaddy(t)
			b, _ := os.ReadFile(logFile)
			if got := strings.Contains(string(b), "trusted_proxies_unix"); got != tc.warn {
				t.Errorf("warned: %v, want %v; log:\n%s", got, tc.warn, b)
			}
		})
	}
}

// loadLoggingWarnings loads one server listening on listen, with server's
// options and handler as its only handler (an oci_registry gets a storage
// folder), its warnings going to the file it returns.
func loadLoggingWarnings(t *testing.T, listen string, options, handler map[string]any) (logFile string) {
	t.Helper()
	logFile = filepath.Join(t.TempDir(), "log.json")
	if handler["handler"] == "oci_registry" {
		handler["storage"] = t.TempDir()
	}
	server := map[string]any{"listen": []string{listen}, "routes": []any{map[string]any{"handle": []any{handler}}}}
	for k, v := range options {
		server[k] = v
	}
	cfg, _ := json.Marshal(map[string]any{
		"admin": map[string]any{"disabled": true},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{
			"level": "WARN", "writer": map[string]any{"output": "file", "filename": logFile},
		}}},
		"apps": map[string]any{"http": map[string]any{"servers": map[string]any{"srv": server}}},
	})
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatal(err)
	}
	return logFile
}
