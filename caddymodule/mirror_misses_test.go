package caddymodule

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// TestMirrorMissSettings: not_found_ttl and max_misses_per_client in the
// Caddyfile (a value, or off) and in JSON (-1: off); bad values are
// refused when the config loads, naming the setting.
func TestMirrorMissSettings(t *testing.T) {
	for _, tc := range []struct {
		block   string
		ttl     caddy.Duration
		perMin  int
		wantErr string
	}{
		{block: "not_found_ttl 10s\nmax_misses_per_client 300", ttl: caddy.Duration(10 * time.Second), perMin: 300},
		{block: "not_found_ttl off\nmax_misses_per_client off", ttl: -1, perMin: -1},
		{block: "", ttl: 0, perMin: 0},
		{block: "not_found_ttl 0s", wantErr: "not_found_ttl must be a positive duration or off"},
		{block: "not_found_ttl soon", wantErr: "not_found_ttl must be a positive duration or off"},
		{block: "not_found_ttl", wantErr: "not_found_ttl needs exactly one argument"},
		{block: "max_misses_per_client 0", wantErr: "max_misses_per_client must be a positive number or off"},
		{block: "max_misses_per_client -5", wantErr: "max_misses_per_client must be a positive number or off"},
		{block: "max_misses_per_client lots", wantErr: "max_misses_per_client must be a positive number or off"},
		{block: "max_misses_per_client 1 2", wantErr: "max_misses_per_client needs exactly one argument"},
	} {
		var r Registry
		err := r.UnmarshalCaddyfile(caddyfile.NewTestDispenser("oci_registry {\nmirror docker.io {\n" + tc.block + "\n}\n}"))
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: err %v, want %q", tc.block, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.block, err)
			continue
		}
		if m := r.Mirrors[0]; m.NotFoundTTL != tc.ttl || m.MaxMissesPerClient != tc.perMin {
			t.Errorf("%q: not_found_ttl %v, max_misses_per_client %d", tc.block, m.NotFoundTTL, m.MaxMissesPerClient)
		}
	}

	dir := t.TempDir()
	for _, tc := range []struct {
		name   string
		mirror map[string]any
		want   string // empty: loads
	}{
		{"values", map[string]any{"not_found_ttl": "15s", "max_misses_per_client": 200}, ""},
		{"off", map[string]any{"not_found_ttl": -1, "max_misses_per_client": -1}, ""},
		{"negative ttl", map[string]any{"not_found_ttl": "-5s"}, "mirror docker.io: not_found_ttl must be a positive duration, or -1 (off)"},
		{"negative budget", map[string]any{"max_misses_per_client": -2}, "mirror docker.io: max_misses_per_client must be a positive number, or -1 (off)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.mirror["prefix"] = "docker.io"
			cfg, _ := json.Marshal(map[string]any{
				"admin": map[string]any{"disabled": true},
				"apps": map[string]any{"http": map[string]any{"servers": map[string]any{"s": map[string]any{
					"listen": []string{"127.0.0.1:0"},
					"routes": []map[string]any{{"handle": []map[string]any{{
						"handler": "oci_registry", "storage": filepath.Join(dir, tc.name),
						"mirrors": []map[string]any{tc.mirror},
					}}}},
				}}}},
			})
			err := caddy.Validate(mustConfig(t, cfg))
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("Validate = %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("Validate = %v\nwant an error with %q", err, tc.want)
			}
		})
	}
}
