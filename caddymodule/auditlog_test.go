package caddymodule

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// TestAuditLogOfItsOwn: a log that includes "audit" gets the audit
// events, and a default log that excludes "audit" does not. Audit events
// used to reach the default log alone, so the audit log stayed empty.
func TestAuditLogOfItsOwn(t *testing.T) {
	dir := t.TempDir()
	addr := freeAddr(t)
	auditFile, mainFile := filepath.Join(dir, "audit.log"), filepath.Join(dir, "main.log")
	file := func(name string) map[string]any { return map[string]any{"output": "file", "filename": name} }
	cfg := map[string]any{
		"admin": map[string]any{"disabled": true},
		"logging": map[string]any{"logs": map[string]any{
			"default": map[string]any{"writer": file(mainFile), "exclude": []string{"audit"}},
			"audit":   map[string]any{"writer": file(auditFile), "include": []string{"audit"}},
		}},
		"apps": map[string]any{"http": map[string]any{"servers": map[string]any{"registry": map[string]any{
			"listen": []string{addr},
			"routes": []any{map[string]any{"handle": []any{map[string]any{
				"handler": "oci_registry", "storage": filepath.Join(dir, "store"),
				"auth": map[string]any{"repositories": map[string]any{"**": map[string]any{"anonymous": []string{"read"}}}},
			}}}},
		}}}},
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := caddy.Load(b, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopCaddy(t) })
	// An anonymous push: denied, which is an audit event.
	resp, err := http.Post("http://"+addr+"/v2/app/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("anonymous push: %d", resp.StatusCode)
	}
	audit, _ := os.ReadFile(auditFile)
	if !bytes.Contains(audit, []byte(`"logger":"audit"`)) || !bytes.Contains(audit, []byte(`"denied"`)) {
		t.Errorf("audit log: %s", audit)
	}
	if main, _ := os.ReadFile(mainFile); bytes.Contains(main, []byte(`"logger":"audit"`)) {
		t.Errorf("main log holds audit events: %s", main)
	}
}
