package caddymodule

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/caddy-oci/caddy-oci/cache"
)

// subStorageConfig serves main with sub_storage team in sub (gc_grace 1s
// there, 1h in main; background GC off so the test runs it) unless sub
// is empty, logging warnings to logFile.
func subStorageConfig(t *testing.T, addr, main, sub, logFile string, readOnly bool) []byte {
	t.Helper()
	h := map[string]any{"handler": "oci_registry", "storage": main, "gc_interval": -1, "gc_grace": "1h", "read_only": readOnly}
	if sub != "" {
		h["sub_storages"] = []any{map[string]any{"prefix": "team", "storage": sub, "gc_grace": "1s"}}
	}
	b, err := json.Marshal(map[string]any{
		"admin": map[string]any{"disabled": true},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{
			"level":  "WARN",
			"writer": map[string]any{"output": "file", "filename": logFile},
		}}},
		"apps": map[string]any{"http": map[string]any{"servers": map[string]any{"s": map[string]any{
			"listen": []string{addr},
			"routes": []any{map[string]any{"handle": []any{h}}},
		}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// openShared returns the open cache.Store of the shared store of dir.
func openShared(t *testing.T, dir string) *cache.Store {
	t.Helper()
	var st *cache.Store
	stores.Range(func(key, value any) bool {
		if key == dir {
			s := value.(*sharedStore)
			s.mu.Lock()
			st = s.st
			s.mu.Unlock()
		}
		return true
	})
	if st == nil {
		t.Fatalf("no open store for %s", dir)
	}
	return st
}

// TestSubStorageThroughCaddy: with sub_storage team, pushes under team/
// land in its folder and nowhere else, each store collects garbage with
// its own gc_grace, a repository the main store held under team/ before
// is hidden and named in a warning at start, and read_only refuses
// pushes and pauses GC in the sub store too.
func TestSubStorageThroughCaddy(t *testing.T) {
	main, sub := t.TempDir(), t.TempDir()
	logFile := filepath.Join(t.TempDir(), "log")
	addr := freeAddr(t)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	do := func(method, path string, body []byte) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://"+addr+path, bytes.NewReader(body))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	pushBlob := func(repo string, b []byte) string {
		t.Helper()
		sum := sha256.Sum256(b)
		d := "sha256:" + hex.EncodeToString(sum[:])
		if code, body := do(http.MethodPost, "/v2/"+repo+"/blobs/uploads/?digest="+d, b); code != http.StatusCreated {
			t.Fatalf("push to %s: %d %s", repo, code, body)
		}
		return d
	}
	blobFile := func(dir, d string) string {
		h := strings.TrimPrefix(d, "sha256:")
		return filepath.Join(dir, "blobs", "sha256", h[:2], h)
	}
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }

	// Before the sub-path: team/old goes to the main store.
	if err := caddy.Load(subStorageConfig(t, addr, main, "", logFile, false), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopCaddy(t) })
	cfgD := pushBlob("team/old", []byte(`{"architecture":"amd64","os":"linux"}`))
	m := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` + cfgD + `","size":37},"layers":[]}`
	req, _ := http.NewRequest(http.MethodPut, "http://"+addr+"/v2/team/old/manifests/v1", strings.NewReader(m))
	req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	if resp, err := client.Do(req); err != nil {
		t.Fatal(err)
	} else if resp.Body.Close(); resp.StatusCode != http.StatusCreated {
		t.Fatalf("push team/old manifest: %d", resp.StatusCode)
	}

	if err := caddy.Load(subStorageConfig(t, addr, main, sub, logFile, false), true); err != nil {
		t.Fatal(err)
	}
	log, _ := os.ReadFile(logFile)
	if !strings.Contains(string(log), "hidden") || !strings.Contains(string(log), `"team/old"`) {
		t.Errorf("no warning naming the hidden team/old at start; log:\n%s", log)
	}
	if code, _ := do(http.MethodGet, "/v2/team/old/manifests/v1", nil); code != http.StatusNotFound {
		t.Errorf("hidden team/old: %d, want 404", code)
	}

	teamD := pushBlob("team/app", []byte("team's layer"))
	mainD := pushBlob("other/app", []byte("main's layer"))
	if !exists(blobFile(sub, teamD)) || exists(blobFile(main, teamD)) {
		t.Errorf("team/app's blob: in sub %v, in main %v; want only in sub", exists(blobFile(sub, teamD)), exists(blobFile(main, teamD)))
	}
	if !exists(blobFile(main, mainD)) || exists(blobFile(sub, mainD)) {
		t.Errorf("other/app's blob: in main %v, in sub %v; want only in main", exists(blobFile(main, mainD)), exists(blobFile(sub, mainD)))
	}
	if code, body := do(http.MethodGet, "/v2/_catalog", nil); code != http.StatusOK || !strings.Contains(body, `["other/app","team/app"]`) {
		t.Errorf("catalog: %d %s, want other/app and team/app only", code, body)
	}

	// Both blobs are linked by no manifest: past team's gc_grace of 1s
	// its is garbage, while main's 1h keeps the other.
	time.Sleep(1500 * time.Millisecond)
	for range 2 {
		for _, dir := range []string{main, sub} {
			if _, err := openShared(t, dir).GC(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if exists(blobFile(sub, teamD)) {
		t.Error("team's unreferenced blob survived its store's 1s gc_grace")
	}
	if !exists(blobFile(main, mainD)) {
		t.Error("main's blob was collected within its 1h gc_grace")
	}

	// read_only: every store refuses pushes and pauses its GC.
	if err := caddy.Load(subStorageConfig(t, addr, main, sub, logFile, true), true); err != nil {
		t.Fatal(err)
	}
	if code, body := do(http.MethodPost, "/v2/team/app/blobs/uploads/", nil); code != http.StatusForbidden || !strings.Contains(body, "read-only") {
		t.Errorf("push to team/app, read-only: %d %s", code, body)
	}
	if !gcPaused(t, sub) || !gcPaused(t, main) {
		t.Errorf("read_only: gc paused in sub %v, main %v; want both", gcPaused(t, sub), gcPaused(t, main))
	}
	if err := caddy.Load(subStorageConfig(t, addr, main, sub, logFile, false), true); err != nil {
		t.Fatal(err)
	}
	if gcPaused(t, sub) {
		t.Error("sub store's gc still paused once writable again")
	}
}

// TestSubStorageConfig: the Caddyfile and JSON forms, and the mistakes
// refused with the directive named.
func TestSubStorageConfig(t *testing.T) {
	dir := t.TempDir()
	adapt := func(block string) ([]byte, error) {
		cfg := "http://127.0.0.1:1 {\n\toci_registry {\n\t\tstorage " + dir + "/main\n\t\t" + block + "\n\t}\n}\n"
		b, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), map[string]any{"filename": "Caddyfile"})
		return b, err
	}
	b, err := adapt("sub_storage team {\n\t\t\tstorage /disk2/team\n\t\t\tmetadata_dir /fast/team\n\t\t\tstorage_reserve 2%\n\t\t\tupload_ttl 2h\n\t\t\tgc_interval off\n\t\t\tgc_grace 10m\n\t\t\tgc_full_interval 12h\n\t\t}\n\t\tsub_storage docker.io {\n\t\t\tstorage /disk3/mirror\n\t\t}")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`"sub_storages":[{"gc_full_interval":43200000000000,"gc_grace":600000000000,"gc_interval":-1,"metadata_dir":"/fast/team","prefix":"team","storage":"/disk2/team","storage_reserve_percent":2,"upload_ttl":7200000000000}`,
		`{"prefix":"docker.io","storage":"/disk3/mirror"}]`,
	} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("adapted JSON lacks %s:\n%s", want, b)
		}
	}
	for _, tc := range []struct{ block, want string }{
		{"sub_storage team {\n\t\t\tstorage /a\n\t\t}\n\t\tsub_storage team/app {\n\t\t\tstorage /b\n\t\t}", `sub_storage: prefix "team/app" overlaps prefix "team": sub-paths must not nest, at Caddyfile:7`},
		{"sub_storage team {\n\t\t\tstorage /a\n\t\t}\n\t\tsub_storage team {\n\t\t\tstorage /b\n\t\t}", `sub_storage: prefix "team" overlaps`},
		{"sub_storage Team {\n\t\t\tstorage /a\n\t\t}", `sub_storage: prefix "Team" is not a repository name`},
		{"sub_storage team {\n\t\t}", "sub_storage team needs `storage <folder>`"},
		{"sub_storage team", "sub_storage team needs `storage <folder>`"},
		{"sub_storage {\n\t\t\tstorage /a\n\t\t}", "sub_storage needs a name prefix"},
		{"sub_storage team {\n\t\t\tstorage s3\n\t\t}", "storage s3 is not supported in a sub_storage"},
		{"sub_storage team {\n\t\t\tstorage /a\n\t\t\tmirror x\n\t\t}", `unrecognized sub_storage subdirective "mirror"`},
		{"sub_storage team {\n\t\t\tstorage /a\n\t\t\tgc_grace -1s\n\t\t}", "gc_grace must be positive"},
		{"sub_storage team {\n\t\t\tstorage /a /b\n\t\t}", "sub_storage team: storage needs exactly one argument"},
	} {
		if _, err := adapt(tc.block); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error with %q", tc.block, err, tc.want)
		}
	}

	// JSON: checked at provision, before any folder is opened.
	for _, tc := range []struct {
		name    string
		handler map[string]any
		want    string
	}{
		{"nested", map[string]any{"sub_storages": []any{map[string]any{"prefix": "a", "storage": dir + "/a"}, map[string]any{"prefix": "a/b", "storage": dir + "/b"}}},
			`sub_storage: prefix "a/b" overlaps prefix "a"`},
		{"no folder", map[string]any{"sub_storages": []any{map[string]any{"prefix": "a"}}}, "sub_storage a: storage (its folder) is required"},
		{"main folder", map[string]any{"sub_storages": []any{map[string]any{"prefix": "a", "storage": dir + "/m"}}}, "sub_storage a: storage " + dir + "/m is already the main storage"},
		{"same folder", map[string]any{"sub_storages": []any{map[string]any{"prefix": "a", "storage": dir + "/a"}, map[string]any{"prefix": "b", "storage": dir + "/a"}}},
			"sub_storage b: storage " + dir + "/a is already sub_storage a's"},
		{"bad reserve", map[string]any{"sub_storages": []any{map[string]any{"prefix": "a", "storage": dir + "/a", "storage_reserve_percent": 100}}}, "sub_storage a: storage_reserve_percent"},
		{"with s3", map[string]any{"storage_s3": map[string]any{"bucket": "b", "endpoint": "http://127.0.0.1:1", "region": "x"}, "metadata_postgres": "postgres://u@127.0.0.1:1/db",
			"sub_storages": []any{map[string]any{"prefix": "a", "storage": dir + "/a"}}}, "sub_storage is not supported with storage s3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.handler["handler"] = "oci_registry"
			if tc.handler["storage_s3"] == nil {
				tc.handler["storage"] = dir + "/m"
			}
			cfg, _ := json.Marshal(map[string]any{
				"admin": map[string]any{"disabled": true},
				"apps": map[string]any{"http": map[string]any{"servers": map[string]any{"s": map[string]any{
					"listen": []string{"127.0.0.1:0"},
					"routes": []map[string]any{{"handle": []map[string]any{tc.handler}}},
				}}}},
			})
			err := caddy.Validate(mustConfig(t, cfg))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate = %v\nwant an error with %q", err, tc.want)
			}
		})
	}
}

type gaugeRecorder struct{ last int64 }

func (g *gaugeRecorder) MirrorCacheSize(n int64)  { g.last = n }
func (g *gaugeRecorder) MirrorEvicted(int, int64) {}

// TestMirrorCacheTotal: with sub-paths, the mirror cache gauge is the sum
// of the stores' sizes, not the figure of whichever reported last.
func TestMirrorCacheTotal(t *testing.T) {
	g := &gaugeRecorder{}
	total := &mirrorCacheTotal{obs: g, sizes: make([]int64, 2)}
	mirrorCacheSlot{total, 0}.MirrorCacheSize(100)
	mirrorCacheSlot{total, 1}.MirrorCacheSize(30)
	mirrorCacheSlot{total, 0}.MirrorCacheSize(70)
	if g.last != 100 {
		t.Errorf("gauge %d, want 70+30", g.last)
	}
}

// countingLister counts the names a store's listing hands out, and those
// that sort before before.
type countingLister struct {
	repositoryLister
	before      string
	read, early int
}

func (c *countingLister) Repositories(ctx context.Context, last string, n int) ([]string, bool, error) {
	page, more, err := c.repositoryLister.Repositories(ctx, last, n)
	for _, name := range page {
		c.read++
		if name < c.before {
			c.early++
		}
	}
	return page, more, err
}

// storeWithRepositories is a new store holding repos, one blob linked in
// each.
func storeWithRepositories(t *testing.T, repos []string) *cache.Store {
	t.Helper()
	st, err := cache.Open(cache.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	body := []byte("a layer")
	d := cache.FromBytes(cache.SHA256, body)
	if _, err := st.PutBlob(ctx, d, int64(len(body)), bytes.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	for _, r := range repos {
		if err := st.LinkBlob(ctx, r, d); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

// TestHiddenUnderReadsOnlyItsRange: the count of repositories a sub-path
// hides reads the names under its prefix (and a page past them), not the
// main store's whole list: it runs before the first request is served.
func TestHiddenUnderReadsOnlyItsRange(t *testing.T) {
	var repos []string
	for i := range 400 {
		repos = append(repos, fmt.Sprintf("alpha/%04d", i))
	}
	repos = append(repos, "team/a", "team/a/x", "team/a/y/z", "team/a-b", "team/ab", "team/b", "zulu/1")
	st := storeWithRepositories(t, repos)
	l := &countingLister{repositoryLister: st, before: "team/a"}
	names, count, err := hiddenUnder(context.Background(), l, "team/a")
	if err != nil {
		t.Fatal(err)
	}
	if count != 3 || strings.Join(names, " ") != "team/a team/a/x team/a/y/z" {
		t.Fatalf("hidden under team/a: %d %v, want 3: team/a team/a/x team/a/y/z", count, names)
	}
	if l.early > 0 || l.read > 64 {
		t.Fatalf("read %d names, %d of them before the prefix; want only the range and one page past it", l.read, l.early)
	}
}

// TestHiddenUnderSkipsNamesSharingItsPrefix: names that start with the
// prefix without being under it (team/ab, team/a-b for team/a) are not
// read either: a prefix "a" must not read every "alpha/..." name.
func TestHiddenUnderSkipsNamesSharingItsPrefix(t *testing.T) {
	repos := []string{"team/a", "team/a/x", "team/a/y/z", "team/b"}
	for i := range 200 {
		repos = append(repos, fmt.Sprintf("team/a-b/%04d", i), fmt.Sprintf("team/ab/%04d", i))
	}
	st := storeWithRepositories(t, repos)
	l := &countingLister{repositoryLister: st}
	names, count, err := hiddenUnder(context.Background(), l, "team/a")
	if err != nil {
		t.Fatal(err)
	}
	if count != 3 || strings.Join(names, " ") != "team/a team/a/x team/a/y/z" {
		t.Fatalf("hidden under team/a: %d %v, want 3: team/a team/a/x team/a/y/z", count, names)
	}
	if l.read > 2*64 {
		t.Fatalf("read %d names for 3 under the prefix; want those and at most a page past each end", l.read)
	}
}
