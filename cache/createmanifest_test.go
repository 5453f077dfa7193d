package cache_test

import (
	"testing"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/manifesttest"
)

// TestCreateManifestContract: the single-node store keeps the contract
// of a create-only push; its "replicas" are the one store.
func TestCreateManifestContract(t *testing.T) {
	manifesttest.Run(t, func(t *testing.T) manifesttest.Replicas {
		s, err := cache.Open(cache.Options{Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return func() manifesttest.Store { return s }
	})
}
