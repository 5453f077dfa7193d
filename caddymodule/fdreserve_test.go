package caddymodule

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestUnmarshalFDReserve(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int
		err  string
	}{
		{in: "oci_fd_reserve", want: 0},
		{in: "oci_fd_reserve 200", want: 200},
		{in: "oci_fd_reserve off", want: -1},
		{in: "oci_fd_reserve 0", err: "oci_fd_reserve"},
		{in: "oci_fd_reserve -5", err: "oci_fd_reserve"},
		{in: "oci_fd_reserve many", err: "oci_fd_reserve"},
		{in: "oci_fd_reserve 10 20", err: "one argument"},
	} {
		var r FDReserve
		err := r.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.in))
		switch {
		case tt.err != "":
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%q: error %v, want one naming %q", tt.in, err, tt.err)
			}
		case err != nil:
			t.Errorf("%q: %v", tt.in, err)
		case r.Reserve != tt.want:
			t.Errorf("%q: reserve %d, want %d", tt.in, r.Reserve, tt.want)
		}
	}
}

// TestRegistryAddsFDReserve: a site with oci_registry gets the listener
// wrapper without asking; listener_wrappers in the global servers option
// replace it (off turns it off); inside a route block it is left out.
func TestRegistryAddsFDReserve(t *testing.T) {
	adapter := caddyconfig.GetAdapter("caddyfile")
	out, _, err := adapter.Adapt([]byte("http://:5000 {\n\toci_registry {\n\t\tstorage ./data\n\t}\n}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), `"listener_wrappers":[{"wrapper":"oci_fd_reserve"}]`) {
		t.Errorf("adapted config lacks the wrapper: %s", out)
	}
	out, _, err = adapter.Adapt([]byte("{\n\tservers {\n\t\tlistener_wrappers {\n\t\t\toci_fd_reserve off\n\t\t}\n\t}\n}\nhttp://:5000 {\n\toci_registry {\n\t\tstorage ./data\n\t}\n}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), `"listener_wrappers":[{"reserve":-1,"wrapper":"oci_fd_reserve"}]`) {
		t.Errorf("adapted config: %s", out)
	}
	// Any global servers option replaces the server's listener
	// wrappers, even one that sets none (Caddy's applyServerOptions):
	// the README says so; this pins it.
	out, _, err = adapter.Adapt([]byte("{\n\tservers {\n\t\ttrusted_proxies static private_ranges\n\t}\n}\nhttp://:5000 {\n\toci_registry {\n\t\tstorage ./data\n\t}\n}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "oci_fd_reserve") {
		t.Errorf("Caddy now keeps the wrapper under a global servers option: update the README: %s", out)
	}
	// Inside a route block, where only handlers go: no wrapper.
	out, _, err = adapter.Adapt([]byte("http://:5000 {\n\troute /v2/* {\n\t\toci_registry {\n\t\t\tstorage ./data\n\t\t}\n\t}\n}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "listener_wrappers") || !strings.Contains(string(out), `"handler":"oci_registry"`) {
		t.Errorf("adapted config: %s", out)
	}
}

// TestMissingFDReserveWarns: a JSON config whose server lacks the wrapper
// serves, and says in its log, once, that the reserve is missing; with
// the wrapper (or the wrapper turned off on purpose) it says nothing.
func TestMissingFDReserveWarns(t *testing.T) {
	const warning = "lacks the oci_fd_reserve wrapper"
	for _, tt := range []struct {
		name     string
		wrappers []any
		warns    bool
	}{
		{name: "none", warns: true},
		{name: "reserve", wrappers: []any{map[string]any{"wrapper": "oci_fd_reserve"}}},
		{name: "off", wrappers: []any{map[string]any{"wrapper": "oci_fd_reserve", "reserve": -1}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			logFile, addr := filepath.Join(t.TempDir(), "log.json"), freeAddr(t)
			server := map[string]any{
				"listen": []string{addr},
				"routes": []any{map[string]any{"handle": []any{map[string]any{"handler": "oci_registry", "storage": t.TempDir()}}}},
			}
			if tt.wrappers != nil {
				server["listener_wrappers"] = tt.wrappers
			}
			cfg, _ := json.Marshal(map[string]any{
				"admin": map[string]any{"disabled": true},
				"logging": map[string]any{"logs": map[string]any{"default": map[string]any{
					"level": "WARN", "writer": map[string]any{"output": "file", "filename": logFile},
				}}},
				"apps": map[string]any{"http": map[string]any{"servers": map[string]any{"registry": server}}},
			})
			if err := caddy.Load(cfg, true); err != nil {
				t.Fatal(err)
			}
			ping(t, addr)
			ping(t, addr)
			stopCaddy(t)
			b, err := os.ReadFile(logFile)
			if err != nil {
				t.Fatal(err)
			}
			if n := strings.Count(string(b), warning); n != map[bool]int{true: 1}[tt.warns] {
				t.Errorf("%d warnings about the missing wrapper, want %d; log:\n%s", n, map[bool]int{true: 1}[tt.warns], b)
			}
		})
	}
}
