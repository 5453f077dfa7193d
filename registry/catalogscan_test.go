package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/cache"
)

// readsCounted is a real store that counts its catalog reads.
type readsCounted struct {
	Store
	reads atomic.Int64
}

func (s *readsCounted) Repositories(ctx context.Context, last string, n int) ([]string, bool, error) {
	s.reads.Add(1)
	return s.Store.Repositories(ctx, last, n)
}

// TestCatalogScanCost: a caller who may read few repositories, asking
// for pages of one, must not cost a store read per two names of a large
// registry (each a query on PostgreSQL): the filtered catalog reads the
// store in large pages whatever n is.
func TestCatalogScanCost(t *testing.T) {
	store, err := cache.Open(cache.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	ctx := t.Context()
	blob := []byte("x")
	d := cache.FromBytes(cache.SHA256, blob)
	if _, err := store.PutBlob(ctx, d, 1, strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	const hidden = 3000
	for i := range hidden {
		if err := store.LinkBlob(ctx, fmt.Sprintf("hidden/r%05d", i), d); err != nil {
			t.Fatal(err)
		}
	}
	if err := store.LinkBlob(ctx, "pub/app", d); err != nil {
		t.Fatal(err)
	}
	pol, err := authscope.NewPolicy(authscope.PolicyConfig{Repositories: map[string]authscope.RepositoryPolicy{
		"pub/**": {Anonymous: []string{"read"}}, "hidden/**": {},
	}})
	if err != nil {
		t.Fatal(err)
	}
	az, err := authscope.NewAuthorizer(authscope.Options{Policy: pol})
	if err != nil {
		t.Fatal(err)
	}
	counted := &readsCounted{Store: store}
	srv := httptest.NewServer(New(Config{Store: counted, Logger: zaptest.NewLogger(t), Authorizer: az, CanRead: az.CanRead}))
	t.Cleanup(srv.Close)
	for _, q := range []string{"n=1", "n=1&last=hidden/r00000", ""} {
		counted.reads.Store(0)
		resp, err := http.Get(srv.URL + "/v2/_catalog?" + q)
		if err != nil {
			t.Fatal(err)
		}
		var c struct{ Repositories []string }
		err = json.NewDecoder(resp.Body).Decode(&c)
		resp.Body.Close()
		if err != nil || len(c.Repositories) != 1 || c.Repositories[0] != "pub/app" {
			t.Fatalf("catalog?%s: %v %q", q, err, c.Repositories)
		}
		if n := counted.reads.Load(); n > 5 {
			t.Errorf("catalog?%s past %d hidden repositories took %d store reads", q, hidden, n)
		}
	}
}
