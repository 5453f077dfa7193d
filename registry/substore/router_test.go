package substore_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/registry"
	"github.com/caddy-oci/caddy-oci/registry/substore"
)

// rig is a registry over a main store and sub stores, served over HTTP.
type rig struct {
	t    *testing.T
	srv  *httptest.Server
	dirs map[string]string // prefix ("" for main) -> folder
}

func openStore(t *testing.T) (*cache.Store, string) {
	t.Helper()
	dir := t.TempDir()
	st, err := cache.Open(cache.Options{Dir: dir, Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st, dir
}

func newRig(t *testing.T, prefixes ...string) *rig {
	t.Helper()
	main, dir := openStore(t)
	rg := &rig{t: t, dirs: map[string]string{"": dir}}
	var subs []substore.Sub
	for _, p := range prefixes {
		st, d := openStore(t)
		rg.dirs[p] = d
		subs = append(subs, substore.Sub{Prefix: p, Store: st})
	}
	router, err := substore.New(main, subs)
	if err != nil {
		t.Fatal(err)
	}
	rg.srv = httptest.NewServer(registry.New(registry.Config{Store: router, Logger: zaptest.NewLogger(t), SparseManifests: true}))
	t.Cleanup(rg.srv.Close)
	return rg
}

func (rg *rig) do(method, path string, body []byte, hdr ...string) (*http.Response, []byte) {
	rg.t.Helper()
	req, err := http.NewRequest(method, rg.srv.URL+path, bytes.NewReader(body))
	if err != nil {
		rg.t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		rg.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// blobFile is where a store in dir keeps blob d.
func blobFile(dir, d string) string {
	h := strings.TrimPrefix(d, "sha256:")
	return filepath.Join(dir, "blobs", "sha256", h[:2], h)
}

// pushBlob pushes b whole (POST with ?digest=) into repo.
func (rg *rig) pushBlob(repo string, b []byte) string {
	rg.t.Helper()
	d := digestOf(b)
	resp, body := rg.do(http.MethodPost, "/v2/"+repo+"/blobs/uploads/?digest="+d, b, "Content-Type", "application/octet-stream")
	if resp.StatusCode != http.StatusCreated {
		rg.t.Fatalf("push blob to %s: %d %s", repo, resp.StatusCode, body)
	}
	return d
}

// pushImage pushes a one-layer image to repo:tag.
func (rg *rig) pushImage(repo, tag string) {
	rg.t.Helper()
	cfg := rg.pushBlob(repo, []byte(`{"architecture":"amd64","os":"linux","repo":"`+repo+`"}`))
	layer := []byte("layer of " + repo)
	ld := rg.pushBlob(repo, layer)
	m, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": 60},
		"layers":        []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": len(layer)}},
	})
	resp, body := rg.do(http.MethodPut, "/v2/"+repo+"/manifests/"+tag, m, "Content-Type", "application/vnd.oci.image.manifest.v1+json")
	if resp.StatusCode != http.StatusCreated {
		rg.t.Fatalf("push manifest %s:%s: %d %s", repo, tag, resp.StatusCode, body)
	}
}

// TestBlobsLandInTheirStore: a blob pushed whole, or in chunks, is stored
// in the folder of the repository's prefix (longest first) and no other,
// and is served from there.
func TestBlobsLandInTheirStore(t *testing.T) {
	rg := newRig(t, "team", "team2/x")
	for _, tc := range []struct{ repo, prefix string }{
		{"team/app", "team"}, {"team", "team"}, {"teams/app", ""}, {"team2/x/y", "team2/x"}, {"team2/y", ""},
	} {
		b := []byte("bytes for " + tc.repo)
		d := rg.pushBlob(tc.repo, b)
		for p, dir := range rg.dirs {
			_, err := os.Stat(blobFile(dir, d))
			if want := p == tc.prefix; (err == nil) != want {
				t.Errorf("%s: blob in store %q: %v, want there %v", tc.repo, p, err, want)
			}
		}
		if resp, got := rg.do(http.MethodGet, "/v2/"+tc.repo+"/blobs/"+d, nil); resp.StatusCode != http.StatusOK || !bytes.Equal(got, b) {
			t.Errorf("%s: GET blob: %d %q", tc.repo, resp.StatusCode, got)
		}
	}
	// A chunked upload: its session lives in the repository's store,
	// whichever request continues it.
	b := []byte("chunked bytes")
	resp, body := rg.do(http.MethodPost, "/v2/team/chunked/blobs/uploads/", nil)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("open upload: %d %s", resp.StatusCode, body)
	}
	loc := resp.Header.Get("Location")
	if resp, body = rg.do(http.MethodPatch, loc, b, "Content-Type", "application/octet-stream"); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("chunk: %d %s", resp.StatusCode, body)
	}
	loc = resp.Header.Get("Location")
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	if resp, body = rg.do(http.MethodPut, loc+sep+"digest="+digestOf(b), nil); resp.StatusCode != http.StatusCreated {
		t.Fatalf("commit: %d %s", resp.StatusCode, body)
	}
	if _, err := os.Stat(blobFile(rg.dirs["team"], digestOf(b))); err != nil {
		t.Errorf("chunked blob not in team's folder: %v", err)
	}
	// The session's id does not lead into another store's repository.
	resp, _ = rg.do(http.MethodPost, "/v2/team/s/blobs/uploads/", nil)
	id := resp.Header.Get("Location")[strings.LastIndex(resp.Header.Get("Location"), "/")+1:]
	if resp, body = rg.do(http.MethodGet, "/v2/other/blobs/uploads/"+id, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("team's upload id under another store's repository: %d %s, want 404", resp.StatusCode, body)
	}
}

// TestMountAcrossStores: a mount within a store links (201); one from a
// repository in another store cannot share the bytes, and carries on as
// a plain upload (202), which the spec allows.
func TestMountAcrossStores(t *testing.T) {
	rg := newRig(t, "team")
	d := rg.pushBlob("team/a", []byte("shared layer"))
	if resp, body := rg.do(http.MethodPost, "/v2/team/b/blobs/uploads/?mount="+d+"&from=team/a", nil); resp.StatusCode != http.StatusCreated {
		t.Errorf("mount within team: %d %s, want 201", resp.StatusCode, body)
	}
	for _, path := range []string{
		"/v2/main/b/blobs/uploads/?mount=" + d + "&from=team/a",
		"/v2/main/b/blobs/uploads/?mount=" + d, // without from: candidates of main's store only
	} {
		resp, body := rg.do(http.MethodPost, path, nil)
		if resp.StatusCode != http.StatusAccepted || !strings.Contains(resp.Header.Get("Location"), "/v2/main/b/blobs/uploads/") {
			t.Errorf("%s: %d %s (Location %q), want 202 and an upload", path, resp.StatusCode, body, resp.Header.Get("Location"))
		}
	}
	if resp, _ := rg.do(http.MethodHead, "/v2/main/b/blobs/"+d, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("main/b links the blob after a refused mount: %d", resp.StatusCode)
	}
}

// TestCatalogAcrossStores: the catalog merges the stores in lexical order
// and pages through them with n and last as one store would, leaving out
// a repository the main store holds under a prefix it no longer owns.
func TestCatalogAcrossStores(t *testing.T) {
	// Written into main first, then hidden by the sub-path.
	main, mainDir := openStore(t)
	team, _ := openStore(t)
	hidden, _ := substore.New(main, nil)
	pre := httptest.NewServer(registry.New(registry.Config{Store: hidden, Logger: zaptest.NewLogger(t)}))
	prerig := &rig{t: t, srv: pre, dirs: map[string]string{"": mainDir}}
	prerig.pushImage("team/old", "v1")
	pre.Close()

	router, err := substore.New(main, []substore.Sub{{Prefix: "team", Store: team}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(registry.New(registry.Config{Store: router, Logger: zaptest.NewLogger(t)}))
	defer srv.Close()
	rg := &rig{t: t, srv: srv}
	names := []string{"a/app", "team", "team-b/app", "team/app", "team/zz", "teamz", "z/app"}
	for _, n := range names {
		rg.pushImage(n, "v1")
	}
	if resp, _ := rg.do(http.MethodGet, "/v2/team/old/tags/list", nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("hidden team/old: %d, want 404", resp.StatusCode)
	}
	want := slices.Clone(names)
	slices.Sort(want)

	catalog := func(q string) ([]string, string) {
		resp, body := rg.do(http.MethodGet, "/v2/_catalog"+q, nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("catalog%s: %d %s", q, resp.StatusCode, body)
		}
		var c struct{ Repositories []string }
		if err := json.Unmarshal(body, &c); err != nil {
			t.Fatal(err)
		}
		return c.Repositories, resp.Header.Get("Link")
	}
	if got, link := catalog(""); !slices.Equal(got, want) || link != "" {
		t.Errorf("whole catalog: %v (Link %q), want %v", got, link, want)
	}
	for n := 1; n <= len(want)+1; n++ {
		var got []string
		last := ""
		for pages := 0; ; pages++ {
			if pages > len(want)+1 {
				t.Fatalf("n=%d: paging does not end", n)
			}
			q := fmt.Sprintf("?n=%d", n)
			if last != "" {
				q += "&last=" + last
			}
			page, link := catalog(q)
			if len(page) > n {
				t.Errorf("n=%d: page of %d", n, len(page))
			}
			got = append(got, page...)
			if link == "" {
				break
			}
			last = page[len(page)-1]
		}
		if !slices.Equal(got, want) {
			t.Errorf("n=%d: pages gave %v, want %v", n, got, want)
		}
	}
}

// TestPrefixesChecked: prefixes are repository names that do not nest.
func TestPrefixesChecked(t *testing.T) {
	for _, tc := range []struct {
		prefixes []string
		ok       bool
	}{
		{[]string{"team", "teams", "docker.io"}, true},
		{[]string{"team", "team/app"}, false},
		{[]string{"team/app", "team"}, false},
		{[]string{"team", "team"}, false},
		{[]string{"Team"}, false},
		{[]string{"team/"}, false},
		{[]string{"../x"}, false},
		{[]string{""}, false},
	} {
		if err := substore.CheckPrefixes(tc.prefixes); (err == nil) != tc.ok {
			t.Errorf("%q: %v, want ok %v", tc.prefixes, err, tc.ok)
		}
	}
}
