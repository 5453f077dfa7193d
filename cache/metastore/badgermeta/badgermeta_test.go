package badgermeta

import (
	"testing"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/authscope/authstoretest"
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

// The same benchmarks as pgmeta's, so the figures compare (badger syncs
// every write; PostgreSQL's test server does not).

func BenchmarkPutManifest(b *testing.B) { metatest.BenchPutManifest(b, open(b)) }

func BenchmarkTagGet(b *testing.B) { metatest.BenchTagGet(b, open(b)) }

func TestAPIKeyContract(t *testing.T) {
	authstoretest.APIKeys(t, func(t *testing.T) authscope.APIKeyStore { return open(t) })
}

func TestSessionContract(t *testing.T) {
	authstoretest.Sessions(t, func(t *testing.T) authscope.SessionStore { return open(t) })
}
