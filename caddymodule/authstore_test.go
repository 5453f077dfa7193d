package caddymodule

import (
	"testing"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/authscope/authstoretest"
	"github.com/caddy-oci/caddy-oci/cache"
)

// The badger store, through the adapters sign-in uses, keeps API keys and
// sessions as every backend must (pgmeta runs the same tables).

func badgerStore(t *testing.T) func() (authRecords, error) {
	st, err := cache.Open(cache.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return func() (authRecords, error) { return st, nil }
}

func TestBadgerAPIKeyContract(t *testing.T) {
	authstoretest.APIKeys(t, func(t *testing.T) authscope.APIKeyStore { return storeKeys(badgerStore(t)) })
}

func TestBadgerSessionContract(t *testing.T) {
	authstoretest.Sessions(t, func(t *testing.T) authscope.SessionStore { return storeSessions(badgerStore(t)) })
}
