package caddymodule

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestMirrorCacheSizeCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		input   string
		want    int64
		wantErr string
	}{
		{input: "mirror_cache_size 50GiB", want: 50 << 30},
		{input: "mirror_cache_size 500MiB", want: 500 << 20},
		{input: "mirror_cache_size 50GB", want: 50_000_000_000},
		{input: "mirror_cache_size 1048576", want: 1 << 20},
		{input: "mirror_cache_size 0", want: 0},
		{input: "mirror_cache_size", wantErr: "mirror_cache_size needs exactly one argument"},
		{input: "mirror_cache_size lots", wantErr: "parsing mirror_cache_size"},
		{input: "mirror_cache_size -1GiB", wantErr: "parsing mirror_cache_size"},
	} {
		t.Run(tc.input, func(t *testing.T) {
			var rg Registry
			err := rg.UnmarshalCaddyfile(caddyfile.NewTestDispenser("oci_registry {\n" + tc.input + "\n}"))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if rg.MirrorCacheSize != tc.want {
				t.Errorf("MirrorCacheSize = %d, want %d", rg.MirrorCacheSize, tc.want)
			}
		})
	}
}

func TestMirrorCacheSizeJSON(t *testing.T) {
	var rg Registry
	if err := caddy.StrictUnmarshalJSON([]byte(`{"mirror_cache_size":53687091200}`), &rg); err != nil {
		t.Fatal(err)
	}
	if rg.MirrorCacheSize != 50<<30 {
		t.Fatalf("MirrorCacheSize = %d", rg.MirrorCacheSize)
	}
	b, _ := json.Marshal(Registry{MirrorCacheSize: 1 << 30})
	if string(b) != `{"mirror_cache_size":1073741824}` {
		t.Fatalf("marshals to %s", b)
	}
	rg.MirrorCacheSize = -1
	if err := rg.Validate(); err == nil || !strings.Contains(err.Error(), "mirror_cache_size") {
		t.Fatalf("negative size: %v", err)
	}
}
