package e2e

import (
	"crypto/tls"
	"encoding/base64"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
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

// TestHomelabExampleServes runs examples/homelab.Caddyfile on a free port
// of localhost and checks what its comments promise, with crane over
// HTTPS verified against the root of the example's own `tls internal`
// CA: anyone pulls, ci-bot pushes under ci/ only, the family's
// repositories are theirs. Changed from the file: the site address, the
// admin port, the storage folder, and, since a test must not touch the
// machine's trust store or port 80, skip_install_trust and no redirects.
func TestHomelabExampleServes(t *testing.T) {
	needBinary(t)
	crane := tool(t, "crane")
	b, err := os.ReadFile(filepath.Join(repoRoot, "examples", "homelab.Caddyfile"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	port := strconv.Itoa(freePort(t))
	cfg := string(b)
	for _, r := range []struct{ old, new string }{
		{"registry.home.arpa {", "localhost:" + port + " {"},
		{"admin localhost:2019", "admin localhost:" + strconv.Itoa(freePort(t)) + "\n\tskip_install_trust\n\tauto_https disable_redirects"},
		{"storage /var/lib/caddy-oci", "storage " + strconv.Quote(filepath.Join(dir, "data"))},
	} {
		if !strings.Contains(cfg, r.old) {
			t.Fatalf("the homelab example no longer has %q; update this test", r.old)
		}
		cfg = strings.Replace(cfg, r.old, r.new, 1)
	}
	config := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	// The lowest bcrypt cost: every request checks the password, and
	// caddy hash-password's cost 14 would make this test slow.
	hashBytes, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	hash := string(hashBytes)
	htpasswd := filepath.Join(dir, "htpasswd")
	var lines string
	for _, u := range []string{"me", "ci-bot", "alice", "eve"} {
		lines += u + ":" + hash + "\n"
	}
	if err := os.WriteFile(htpasswd, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	// Caddy keeps its CA in its data folder: a temp one, through XDG_DATA_HOME.
	caddyData := filepath.Join(dir, "xdg")
	cmd := exec.Command(caddyBin, "run", "--config", config, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+caddyData, "CADDY_OCI_HTPASSWD="+htpasswd)
	out := new(syncBuffer)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("caddy output:\n%s", out.String())
		}
	})
	root := filepath.Join(caddyData, "caddy", "pki", "authorities", "local", "root.crt")
	addr := "localhost:" + port
	probe := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := probe.Get("https://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if _, err := os.Stat(root); err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the homelab example does not serve https://%s/v2/ after a minute (%v):\n%s", addr, err, out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}

	// crane as a user (or anonymous), verifying TLS against the CA's root.
	as := func(user string) []string {
		cfgDir := t.TempDir()
		auths := "{}"
		if user != "" {
			auths = `{"auths":{"` + addr + `":{"auth":"` + base64.StdEncoding.EncodeToString([]byte(user+":pw")) + `"}}}`
		}
		if err := os.WriteFile(filepath.Join(cfgDir, "config.json"), []byte(auths), 0o600); err != nil {
			t.Fatal(err)
		}
		return []string{"DOCKER_CONFIG=" + cfgDir, "SSL_CERT_FILE=" + root}
	}
	// The owners push v1 first; then each case pulls v1 and pushes a
	// fresh image (crane skips a push of a manifest already there).
	src, want := newLayout(t)
	for user, repo := range map[string]string{"ci-bot": "ci/app", "alice": "family/photos", "me": "me/tools"} {
		run(t, as(user), crane, "push", src, addr+"/"+repo+":v1")
	}
	for i, c := range []struct {
		user, repo string
		push, pull bool
	}{
		{"ci-bot", "ci/app", true, true},
		{"", "ci/app", false, true},
		{"ci-bot", "family/photos", false, false},
		{"alice", "family/photos", true, true},
		{"", "family/photos", false, false},
		{"eve", "family/photos", false, false},
		{"me", "me/tools", true, true},
		{"ci-bot", "me/tools", false, true},
		{"me", "docker.io/library/debian", false, false}, // a mirror: no pushes (and no upstream here)
	} {
		ref := addr + "/" + c.repo
		got, err := commandOutput(as(c.user), crane, "digest", ref+":v1")
		if pulled := err == nil && strings.TrimSpace(got) == want; pulled != c.pull {
			t.Errorf("%q reading %s:v1: %v, want %v:\n%s", c.user, ref, pulled, c.pull, got)
		}
		fresh, freshDigest := newLayout(t)
		got, err = commandOutput(as(c.user), crane, "push", fresh, ref+":t"+strconv.Itoa(i))
		if pushed := err == nil && strings.Contains(got, freshDigest); pushed != c.push {
			t.Errorf("%q pushing to %s: %v, want %v:\n%s", c.user, ref, pushed, c.push, got)
		}
	}
}
