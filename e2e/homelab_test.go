package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestHomelabExample validates examples/homelab.Caddyfile as written, as
// CI's check that the example stays a working config: every module is
// provisioned (the htpasswd file is read, groups and rules are checked),
// though nothing is served. Only its htpasswd file is elsewhere, through
// the environment variable the example reads.
func TestHomelabExample(t *testing.T) {
	needBinary(t)
	example := filepath.Join(repoRoot, "examples", "homelab.Caddyfile")
	hash := strings.TrimSpace(run(t, nil, caddyBin, "hash-password", "--plaintext", "ci-password"))
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(htpasswd, []byte("ci-bot:"+hash+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := run(t, []string{"CADDY_OCI_HTPASSWD=" + htpasswd}, caddyBin, "validate", "--config", example, "--adapter", "caddyfile")
	if !strings.Contains(out, "Valid configuration") {
		t.Errorf("validate %s:\n%s", example, out)
	}
	b, err := os.ReadFile(example)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"tls internal", "oci_registry", "mirror docker.io", "htpasswd", "access "} {
		if !strings.Contains(string(b), want) {
			t.Errorf("the homelab example no longer has %q", want)
		}
	}
	// validate provisions: a missing htpasswd file fails it.
	out, err = commandOutput([]string{"CADDY_OCI_HTPASSWD=" + htpasswd + ".missing"}, caddyBin, "validate", "--config", example, "--adapter", "caddyfile")
	if err == nil || !strings.Contains(out, "htpasswd") {
		t.Errorf("validate with no htpasswd file: %v\n%s", err, out)
	}
}
