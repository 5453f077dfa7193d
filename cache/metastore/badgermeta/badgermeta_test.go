package badgermeta

import (
	"testing"

	"github.com/caddy-oci/caddy-oci/cache/metastore"
	"github.com/caddy-oci/caddy-oci/cache/metastore/metatest"
)

func open(t testing.TB) *Store {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

func TestContract(t *testing.T) {
	metatest.Run(t, func(t *testing.T) metastore.Store { return open(t) })
}
