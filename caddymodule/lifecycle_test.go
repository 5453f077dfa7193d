package caddymodule

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-oci/caddy-oci/cache"
)

// config returns a Caddy JSON config serving the registry from dir on
// addr, with the admin API off so tests do not fight over its port.
func config(t *testing.T, addr, dir string, maxManifest int64) []byte {
	t.Helper()
	handler := map[string]any{"handler": "oci_registry", "storage": dir}
	if maxManifest > 0 {
		handler["max_manifest_size"] = maxManifest
	}
	cfg := map[string]any{
		"admin":   map[string]any{"disabled": true},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"level": "ERROR"}}},
		"apps": map[string]any{
			"http": map[string]any{
				"servers": map[string]any{
					"registry": map[string]any{
						"listen": []string{addr},
						"routes": []any{map[string]any{"handle": []any{handler}}},
					},
				},
			},
		},
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func ping(t *testing.T, addr string) {
	t.Helper()
	// A connection opened as a reload closes the old listener may be
	// reset by the kernel (README, "Config reloads"): clients retry that,
	// and so does this check, a few times.
	var resp *http.Response
	var err error
	for try := 0; try < 3; try++ {
		if resp, err = http.Get("http://" + addr + "/v2/"); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v2/: %s %s", resp.Status, body)
	}
	if v := resp.Header.Get("Docker-Distribution-API-Version"); v != "registry/2.0" {
		t.Errorf("Docker-Distribution-API-Version = %q", v)
	}
}

// TestReloadValidateShareStore provisions the handler on one storage
// folder twice in one process (a reload, then a validate beside the running
// config): badger allows one Open per directory, so this only works if the
// store is shared. After Stop the store must be closed again.
func TestReloadValidateShareStore(t *testing.T) {
	dir := t.TempDir()
	addr := freeAddr(t)

	if err := caddy.Load(config(t, addr, dir, 0), true); err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			stopCaddy(t)
		}
	})
	ping(t, addr)

	// Reload with a changed handler config on the same folder.
	if err := caddy.Load(config(t, addr, dir, 1<<20), true); err != nil {
		t.Fatalf("reload: %v", err)
	}
	ping(t, addr)
	if n, ok := stores.References(dir); !ok || n != 1 {
		t.Errorf("after reload: %d references to the store (present %v), want 1", n, ok)
	}

	// Validate beside the running config.
	var cfg caddy.Config
	if err := caddy.StrictUnmarshalJSON(config(t, freeAddr(t), dir, 0), &cfg); err != nil {
		t.Fatal(err)
	}
	if err := caddy.Validate(&cfg); err != nil {
		t.Fatalf("validate beside running config: %v", err)
	}
	ping(t, addr)

	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped = true
	if _, ok := stores.References(dir); ok {
		t.Error("store still referenced after Stop")
	}
	st, err := cache.Open(cache.Options{Dir: dir})
	if err != nil {
		t.Fatalf("store not closed after Stop: %v", err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestValidateDoesNotOpen: validation provisions the handler but must not
// open (or even create) the store, so it works next to another process
// holding the store's lock.
func TestValidateDoesNotOpen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "not-yet")
	var cfg caddy.Config
	if err := caddy.StrictUnmarshalJSON(config(t, freeAddr(t), dir, 0), &cfg); err != nil {
		t.Fatal(err)
	}
	if err := caddy.Validate(&cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("validate touched the storage folder: %v", err)
	}
	if _, ok := stores.References(dir); ok {
		t.Error("store still referenced after validate")
	}
}

// TestValidateRejects covers config errors reported by Validate.
func TestValidateRejects(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		handler string
		wantErr string
	}{
		{fmt.Sprintf(`{"handler":"oci_registry","storage":%q}`, file), "not a directory"},
		{`{"handler":"oci_registry","max_manifest_size":-1}`, "max_manifest_size"},
		{`{"handler":"oci_registry","upload_ttl":-5}`, "upload_ttl"},
		{`{"handler":"oci_registry","bogus":1}`, "bogus"},
		{`{"handler":"oci_registry","gc_interval":1000}`, "gc_interval must be at least 1s (or off): 1µs"},
		{`{"handler":"oci_registry","gc_full_interval":999999999}`, "gc_full_interval must be at least 1s"},
		{`{"handler":"oci_registry","gc_full_interval":-1}`, "gc_full_interval must be at least 1s (it cannot be turned off)"},
		{`{"handler":"oci_registry","scrub_interval":1}`, "scrub_interval must be at least 1s"},
		{`{"handler":"oci_registry","mirrors":[{"prefix":"d.io","tag_ttl":-1}]}`, "mirror d.io: tag_ttl must be a positive duration"},
		{`{"handler":"oci_registry","mirrors":[{"prefix":"d.io","stale_if_error":-1}]}`, "mirror d.io: stale_if_error must be a positive duration"},
		{`{"handler":"oci_registry","mirrors":[{"prefix":"d.io","dial_timeout":-1}]}`, "mirror d.io: dial_timeout must be a positive duration"},
		{`{"handler":"oci_registry","mirrors":[{"prefix":"d.io","response_header_timeout":-1}]}`, "mirror d.io: response_header_timeout must be a positive duration"},
		{`{"handler":"oci_registry","mirrors":[{"prefix":"d.io","stall_timeout":-1}]}`, "mirror d.io: stall_timeout must be a positive duration"},
		{fmt.Sprintf(`{"handler":"oci_registry","sub_storages":[{"prefix":"team","storage":%q,"gc_interval":5}]}`, t.TempDir()), "gc_interval must be at least 1s"},
	} {
		cfgJSON := fmt.Sprintf(`{"admin":{"disabled":true},"apps":{"http":{"servers":{"s":{"listen":[%q],"routes":[{"handle":[%s]}]}}}}}`,
			freeAddr(t), tc.handler)
		var cfg caddy.Config
		if err := caddy.StrictUnmarshalJSON([]byte(cfgJSON), &cfg); err != nil {
			t.Fatal(err)
		}
		err := caddy.Validate(&cfg)
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: error %v, want one containing %q", tc.handler, err, tc.wantErr)
		}
	}
}

func init() {
	// Keep caddy.AppDataDir (the default storage) out of the user's home
	// should a test ever provision without storage.
	if os.Getenv("XDG_DATA_HOME") == "" {
		_ = os.Setenv("XDG_DATA_HOME", filepath.Join(os.TempDir(), fmt.Sprintf("caddy-oci-test-%d", time.Now().UnixNano())))
	}
}

// Every file a config names is read as hostile: a device, a pipe or a
// folder is refused by name, at once (a pipe would hang the load, /dev/zero
// fill memory).
func TestConfigFilesMustBeRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"/dev/zero", fifo, dir} {
		for _, handler := range []string{
			`{"handler":"oci_registry","storage":%q,"auth":{"htpasswd":%q}}`,
			`{"handler":"oci_registry","storage":%q,"mirrors":[{"prefix":"docker.io","upstreams":["https://registry-1.docker.io"],"ca_file":%q}]}`,
			`{"handler":"oci_registry","storage":%q,"mirrors":[{"prefix":"docker.io","upstreams":["https://registry-1.docker.io"],"credentials_file":%q}]}`,
			`{"handler":"oci_registry","storage":%q,"auth":{"ldap":{"url":"ldap://127.0.0.1:1","bind_dn":"cn=admin","bind_password_file":%q,"base_dn":"dc=x","user_filter":"(uid={username})"}}}`,
		} {
			h := fmt.Sprintf(handler, t.TempDir(), bad)
			cfgJSON := fmt.Sprintf(`{"admin":{"disabled":true},"apps":{"http":{"servers":{"s":{"listen":[%q],"routes":[{"handle":[%s]}]}}}}}`, freeAddr(t), h)
			var cfg caddy.Config
			if err := caddy.StrictUnmarshalJSON([]byte(cfgJSON), &cfg); err != nil {
				t.Fatalf("%s: %v", h, err)
			}
			done := make(chan error, 1)
			go func() { done <- caddy.Validate(&cfg) }()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), "not a regular file") {
					t.Errorf("%s: error %v, want one saying it is not a regular file", h, err)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: still loading after 10 s", h)
			}
		}
	}
}
