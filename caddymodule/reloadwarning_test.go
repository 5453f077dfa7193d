package caddymodule

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// A reload that changes settings only a restart applies warns, and the
// warning names each setting with the value in use and the one asked for.
func TestReloadWarningNamesSettings(t *testing.T) {
	dir, logFile, addr := t.TempDir(), filepath.Join(t.TempDir(), "log.json"), freeAddr(t)
	load := func(extra map[string]any) {
		t.Helper()
		handler := map[string]any{"handler": "oci_registry", "storage": dir}
		for k, v := range extra {
			handler[k] = v
		}
		cfg, _ := json.Marshal(map[string]any{
			"admin": map[string]any{"disabled": true},
			"logging": map[string]any{"logs": map[string]any{"default": map[string]any{
				"level": "WARN", "writer": map[string]any{"output": "file", "filename": logFile},
			}}},
			"apps": map[string]any{"http": map[string]any{"servers": map[string]any{"registry": map[string]any{
				"listen": []string{addr},
				"routes": []any{map[string]any{"handle": []any{handler}}},
			}}}},
		})
		if err := caddy.Load(cfg, true); err != nil {
			t.Fatal(err)
		}
	}
	load(nil)
	t.Cleanup(func() { stopCaddy(t) })
	ping(t, addr)
	load(map[string]any{"gc_grace": "2h", "upload_ttl": "12h", "max_manifest_size": 1 << 20})
	ping(t, addr)

	b, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	var found string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "storage already open with other settings") {
			found = line
		}
	}
	if found == "" {
		t.Fatalf("no warning about the storage's settings in the log:\n%s", b)
	}
	for _, want := range []string{"upload_ttl: 24h0m0s -> 12h0m0s", "gc_grace: 1h0m0s -> 2h0m0s"} {
		if !strings.Contains(found, want) {
			t.Errorf("warning lacks %q:\n%s", want, found)
		}
	}
	for _, not := range []string{"max_manifest_size", "gc_interval", "storage_reserve"} {
		if strings.Contains(found, not) {
			t.Errorf("warning names %s, which did not change or applies at once:\n%s", not, found)
		}
	}
}
