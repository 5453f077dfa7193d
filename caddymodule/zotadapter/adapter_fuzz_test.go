package zotadapter

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// FuzzAdapt: any bytes given as a zot config either fail with an error or
// adapt to Caddy JSON with one server whose last route is the registry,
// its handler's JSON read back as the module reads it; never a panic
// (an operator's typo must come back as a message, not a stack trace).
func FuzzAdapt(f *testing.F) {
	seeds, err := filepath.Glob(filepath.Join("testdata", "zot", "*.json"))
	if err != nil || len(seeds) == 0 {
		f.Fatalf("no seed configs: %v", err)
	}
	for _, p := range seeds {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"storage":{"rootDirectory":"/tmp/zot"},"http":{"address":"127.0.0.1","port":"8080"}}`))
	f.Add([]byte(`{"storage":{"rootDirectory":7},"http":{"port":[]}}`))
	f.Add([]byte(`{"storage":{"subPaths":{"/a":{"rootDirectory":"/x"}}},"http":{"accessControl":{"repositories":{"**":{"defaultPolicy":["read"]}}}}}`))
	adapter := caddyconfig.GetAdapter("zot")
	f.Fuzz(func(t *testing.T, body []byte) {
		out, warnings, err := adapter.Adapt(body, map[string]any{"filename": "config.json"})
		if err != nil {
			return
		}
		decode(t, out, warnings)
	})
}
