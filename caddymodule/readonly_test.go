package caddymodule

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"golang.org/x/crypto/bcrypt"
)

// readOnlyConfig serves the storage dir on two addresses: pub with
// read_only as roPub says, and internal as roInternal says. pub asks for
// credentials (htpasswd with nobody in it, anonymous pull).
func readOnlyConfig(t *testing.T, dir, htpasswd, pub, internal string, roPub, roInternal bool) []byte {
	t.Helper()
	server := func(addr string, h map[string]any) map[string]any {
		return map[string]any{"listen": []string{addr}, "routes": []any{map[string]any{"handle": []any{h}}}}
	}
	pubH := map[string]any{"handler": "oci_registry", "storage": dir, "read_only": roPub, "auth": map[string]any{
		"htpasswd":     htpasswd,
		"repositories": map[string]any{"**": map[string]any{"anonymous": []string{"read"}}},
	}}
	intH := map[string]any{"handler": "oci_registry", "storage": dir, "read_only": roInternal}
	cfg := map[string]any{
		"admin":   map[string]any{"disabled": true},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"level": "ERROR"}}},
		"apps": map[string]any{"http": map[string]any{"servers": map[string]any{
			"pub": server(pub, pubH), "internal": server(internal, intH),
		}}},
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// gcPaused reports whether the shared store of dir has its GC paused.
func gcPaused(t *testing.T, dir string) bool {
	t.Helper()
	var paused, found bool
	stores.Range(func(key, value any) bool {
		if key == dir {
			s := value.(*sharedStore)
			s.mu.Lock()
			if s.st != nil {
				found, paused = true, s.st.GCPaused()
			}
			s.mu.Unlock()
		}
		return true
	})
	if !found {
		t.Fatalf("no open store for %s", dir)
	}
	return paused
}

// TestReadOnlyThroughCaddy: read_only refuses a push with 403 DENIED
// before asking for credentials, while another site on the same storage
// still takes pushes; GC pauses only while every site of the storage is
// read-only, and the switch takes a reload.
func TestReadOnlyThroughCaddy(t *testing.T) {
	dir := t.TempDir()
	hash, _ := bcrypt.GenerateFromPassword([]byte("ci-pw"), bcrypt.MinCost)
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(htpasswd, []byte("ci:"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pub, internal := freeAddr(t), freeAddr(t)
	if err := caddy.Load(readOnlyConfig(t, dir, htpasswd, pub, internal, true, false), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopCaddy(t) })
	// No pooled connections: a port freeAddr hands out may have served an
	// earlier test's server, whose idle connection a POST would reuse and
	// find closed.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

	post := func(addr string) (int, string) {
		resp, err := client.Post("http://"+addr+"/v2/team/app/blobs/uploads/", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := post(pub); code != http.StatusForbidden || !strings.Contains(body, "DENIED") || !strings.Contains(body, "read-only") {
		t.Errorf("anonymous push on the read-only site: %d %s, want 403 DENIED read-only (not a 401 challenge)", code, body)
	}
	if code, body := post(internal); code != http.StatusAccepted {
		t.Errorf("push on the writable site: %d %s", code, body)
	}
	if resp, err := client.Get("http://" + pub + "/v2/team/app/tags/list"); err != nil {
		t.Fatal(err)
	} else if resp.Body.Close(); resp.StatusCode != http.StatusNotFound {
		t.Errorf("read on the read-only site: %d, want 404 NAME_UNKNOWN (a read, answered)", resp.StatusCode)
	}
	if gcPaused(t, dir) {
		t.Error("gc paused while a writable site uses the storage")
	}

	for _, step := range []struct {
		roPub, roInternal bool
		wantPaused        bool
	}{
		{true, true, true},
		{true, false, false},
		{false, false, false},
		{true, true, true},
	} {
		if err := caddy.Load(readOnlyConfig(t, dir, htpasswd, pub, internal, step.roPub, step.roInternal), true); err != nil {
			t.Fatal(err)
		}
		if got := gcPaused(t, dir); got != step.wantPaused {
			t.Errorf("read_only %v/%v: gc paused %v, want %v", step.roPub, step.roInternal, got, step.wantPaused)
		}
		code, _ := post(internal)
		if want := map[bool]int{true: http.StatusForbidden, false: http.StatusAccepted}[step.roInternal]; code != want {
			t.Errorf("read_only %v/%v: push on internal: %d, want %d", step.roPub, step.roInternal, code, want)
		}
	}
}
