package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-oci/caddy-oci/cache"
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

// TestMirrorCacheCountedAtStart: the mirror cache limit and its count
// apply when Caddy starts the config, not on the first request, so a
// restart with a lowered limit evicts (and the gauge reads true) at once.
func TestMirrorCacheCountedAtStart(t *testing.T) {
	dir := t.TempDir()
	st, err := cache.Open(cache.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	blob := bytes.Repeat([]byte("m"), 4096)
	d := cache.FromBytes(cache.SHA256, blob)
	f, _, err := st.Fill(t.Context(), "docker.io/library/x", d, func(context.Context) (io.ReadCloser, int64, error) {
		return io.NopCloser(bytes.NewReader(blob)), int64(len(blob)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	addr := freeAddr(t)
	cfg := strings.Replace(string(config(t, addr, dir, 0)), `"handler":"oci_registry"`,
		`"handler":"oci_registry","mirror_cache_size":1073741824,"mirrors":[{"prefix":"docker.io","upstreams":["http://127.0.0.1:1"]}]`, 1)
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopCaddy(t) })
	v, loaded, err := stores.LoadOrNew(dir, nil)
	if err != nil || !loaded {
		t.Fatalf("no shared store for %s: %v", dir, err)
	}
	defer func() { _, _ = stores.Delete(dir) }()
	open, err := v.(*sharedStore).open()
	if err != nil {
		t.Fatal(err)
	}
	// No request has been made. Starting counts in the background; a pass
	// now counts at once, and counts nothing unless starting set the
	// limit up.
	if _, err := open.EvictMirrored(); err != nil {
		t.Fatal(err)
	}
	if got := open.MirrorCacheSize(); got != int64(len(blob)) {
		t.Fatalf("mirror cache size at start = %d, want %d", got, len(blob))
	}
}
