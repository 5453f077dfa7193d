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
	store, d := storeWithOneBlob(t)
	ctx := t.Context()
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

// TestCatalogNothingReadableNoScan: a caller the policy lets read no
// repository at all (anonymous on a private registry, a user without
// grants) is answered the empty catalog without a scan of the store:
// otherwise every anonymous GET /v2/_catalog reads and checks every
// repository name of the registry, to list none.
func TestCatalogNothingReadableNoScan(t *testing.T) {
	store, d := storeWithOneBlob(t)
	ctx := t.Context()
	for i := range 3000 {
		if err := store.LinkBlob(ctx, fmt.Sprintf("team/r%05d", i), d); err != nil {
			t.Fatal(err)
		}
	}
	pol, err := authscope.NewPolicy(authscope.PolicyConfig{
		Repositories: map[string]authscope.RepositoryPolicy{
			"team/**":     {Policies: []authscope.Grant{{Users: []string{"alice"}, Actions: []string{"read"}}}},
			"drop/**":     {Policies: []authscope.Grant{{Users: []string{"bob"}, Actions: []string{"create"}}}},
			"team/r01234": {Anonymous: []string{"delete"}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	hp := testHtpasswd(t, "alice", "alice-pw", "bob", "bob-pw")
	az, err := authscope.NewAuthorizer(authscope.Options{Policy: pol, Htpasswd: hp})
	if err != nil {
		t.Fatal(err)
	}
	counted := &readsCounted{Store: store}
	srv := httptest.NewServer(New(Config{Store: counted, Logger: zaptest.NewLogger(t), Authorizer: az, CanRead: az.CanRead}))
	t.Cleanup(srv.Close)
	list := func(user, pass string) ([]string, int64) {
		t.Helper()
		counted.reads.Store(0)
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v2/_catalog", nil)
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var c struct{ Repositories []string }
		if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&c) != nil {
			t.Fatalf("%q: status %d", user, resp.StatusCode)
		}
		return c.Repositories, counted.reads.Load()
	}
	for _, who := range [][2]string{{"", ""}, {"bob", "bob-pw"}} {
		repos, reads := list(who[0], who[1])
		if len(repos) != 0 || reads != 0 {
			t.Errorf("%q, who may read nothing: %d repositories listed after %d store reads, want none and no read", who[0], len(repos), reads)
		}
	}
	if repos, _ := list("alice", "alice-pw"); len(repos) != 1000 {
		t.Errorf("alice, who may read team/**: %d repositories on the first page, want 1000", len(repos))
	}
}

// TestCatalogScansOnlyReadableRanges: the catalog of a caller who may
// read a few corners of a large registry reads only the names under the
// literal prefixes of the patterns that grant it read, not every name
// of the registry; the list (and its pages) is what a full scan gives.
func TestCatalogScansOnlyReadableRanges(t *testing.T) {
	store, d := storeWithOneBlob(t)
	ctx := t.Context()
	names := []string{"pub", "pub/app", "pub-x", "pubx/y", "xa/one", "xb/two", "xc/three", "zz/top", "zz/tip", "a/b"}
	for i := range 9000 {
		names = append(names, fmt.Sprintf("hidden/r%05d", i))
	}
	for _, n := range names {
		if err := store.LinkBlob(ctx, n, d); err != nil {
			t.Fatal(err)
		}
	}
	pol, err := authscope.NewPolicy(authscope.PolicyConfig{Repositories: map[string]authscope.RepositoryPolicy{
		"pub/**":     {Anonymous: []string{"read"}},
		"x{a,b}/*":   {Anonymous: []string{"read"}},
		"zz/t[o]p":   {Anonymous: []string{"read"}},
		"hidden/**":  {},
		"zz/**":      {},
		"a/**":       {Default: []string{"read"}},
		"pub/secret": {},
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
	want := []string{"pub", "pub/app", "xa/one", "xb/two", "zz/top"}
	for _, n := range []string{"", "1", "2"} {
		counted.reads.Store(0)
		var got []string
		next := "/v2/_catalog"
		if n != "" {
			next += "?n=" + n
		}
		pages := 0
		for ; next != ""; pages++ {
			if pages > 10 {
				t.Fatalf("n=%s: more than 10 pages", n)
			}
			resp, err := http.Get(srv.URL + next)
			if err != nil {
				t.Fatal(err)
			}
			var c struct{ Repositories []string }
			err = json.NewDecoder(resp.Body).Decode(&c)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, c.Repositories...)
			next = ""
			if l := resp.Header.Get("Link"); l != "" {
				next = l[1:strings.IndexByte(l, '>')]
			}
		}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("n=%s: listed %q, want %q", n, got, want)
		}
		// One read per range a page looks at (pub, xa/, xb/, zz/t), and
		// one past; a full scan takes a read per 1,000 names.
		limit := int64(3 * pages)
		if n == "" {
			limit = 6
		}
		if reads := counted.reads.Load(); reads > limit {
			t.Errorf("n=%s: %d store reads over %d pages for %d readable names among %d", n, reads, pages, len(want), len(names))
		}
	}
}

// TestCatalogManyRangesScans: a caller granted read under more prefixes
// than catalogMaxRanges is listed by the scan, with the same answer.
func TestCatalogManyRangesScans(t *testing.T) {
	store, d := storeWithOneBlob(t)
	ctx := t.Context()
	repos := map[string]authscope.RepositoryPolicy{"hidden/**": {}}
	var want []string
	for i := range catalogMaxRanges + 6 {
		repos[fmt.Sprintf("p%03d/**", i)] = authscope.RepositoryPolicy{Anonymous: []string{"read"}}
		name := fmt.Sprintf("p%03d/app", i)
		want = append(want, name)
		for _, n := range []string{name, fmt.Sprintf("hidden/r%03d", i)} {
			if err := store.LinkBlob(ctx, n, d); err != nil {
				t.Fatal(err)
			}
		}
	}
	pol, err := authscope.NewPolicy(authscope.PolicyConfig{Repositories: repos})
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
	resp, err := http.Get(srv.URL + "/v2/_catalog")
	if err != nil {
		t.Fatal(err)
	}
	var c struct{ Repositories []string }
	err = json.NewDecoder(resp.Body).Decode(&c)
	resp.Body.Close()
	if err != nil || strings.Join(c.Repositories, " ") != strings.Join(want, " ") {
		t.Fatalf("listed %q (%v), want %q", c.Repositories, err, want)
	}
	if reads := counted.reads.Load(); reads > 2 {
		t.Errorf("%d store reads for %d names: the scan reads them in one", reads, 2*len(want))
	}
}

// storeWithOneBlob is a new store holding one blob, d, for repositories
// to link.
func storeWithOneBlob(t *testing.T) (*cache.Store, cache.Digest) {
	t.Helper()
	store, err := cache.Open(cache.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	d := cache.FromBytes(cache.SHA256, []byte("x"))
	if _, err := store.PutBlob(t.Context(), d, 1, strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	return store, d
}
