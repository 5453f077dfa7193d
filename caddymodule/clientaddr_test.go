package caddymodule

import (
	"encoding/json"
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
			logFile, addr := filepath.Join(t.TempDir(), "log.json"), freeAddr(t)
			if tc.handler["handler"] == "oci_registry" {
				tc.handler["storage"] = t.TempDir()
			}
			server := map[string]any{"listen": []string{addr}, "routes": []any{map[string]any{"handle": []any{tc.handler}}}}
			for k, v := range tc.server {
				server[k] = v
			}
			cfg, _ := json.Marshal(map[string]any{
				"admin": map[string]any{"disabled": true},
				"logging": map[string]any{"logs": map[string]any{"default": map[string]any{
					"level": "WARN", "writer": map[string]any{"output": "file", "filename": logFile},
				}}},
				"apps": map[string]any{"http": map[string]any{"servers": map[string]any{"srv": server}}},
			})
			lenientProxiesWarned.Store(false)
			if err := caddy.Load(cfg, true); err != nil {
				t.Fatal(err)
			}
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
