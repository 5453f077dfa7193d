package mirrorsync_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcr "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"go.uber.org/zap/zaptest"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/registry"
	"github.com/caddy-oci/caddy-oci/registry/mirrorsync"
)

// upstreamRegistry is go-containerregistry's registry behind a wrapper
// that logs every request, pages tag lists two at a time with a Link
// header, answers 429 to the next failN requests, and can go down.
type upstreamRegistry struct {
	t    *testing.T
	srv  *httptest.Server
	push *httptest.Server // the bare registry, for seeding

	mu         sync.Mutex
	log        []string // "METHOD /v2/..."
	failN      int
	retryAfter string
	down       bool
	downAfter  int // go down after this many more requests (0: never)
}

func newUpstream(t *testing.T) *upstreamRegistry {
	u := &upstreamRegistry{t: t}
	reg := ggcr.New(ggcr.Logger(log.New(io.Discard, "", 0)))
	u.push = httptest.NewServer(reg)
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.log = append(u.log, r.Method+" "+r.URL.Path)
		if u.downAfter > 0 {
			if u.downAfter--; u.downAfter == 0 {
				u.down = true
			}
		}
		down, fail := u.down, u.failN > 0
		if fail {
			u.failN--
		}
		ra := u.retryAfter
		u.mu.Unlock()
		switch {
		case down:
			// A dropped connection, as a dead upstream behind a proxy.
			hj, ok := w.(http.Hijacker)
			if !ok {
				t.Error("no hijacker")
				return
			}
			c, _, _ := hj.Hijack()
			c.Close()
			return
		case fail:
			if ra != "" {
				w.Header().Set("Retry-After", ra)
			}
			http.Error(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}`, http.StatusTooManyRequests)
			return
		}
		if strings.HasSuffix(r.URL.Path, "/tags/list") {
			u.pagedTags(w, r, reg)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(func() { u.srv.Close(); u.push.Close() })
	return u
}

// pagedTags serves at most two tags a page, with Link to the next.
func (u *upstreamRegistry) pagedTags(w http.ResponseWriter, r *http.Request, reg http.Handler) {
	q := r.URL.Query()
	q.Set("n", "2")
	r2 := r.Clone(r.Context())
	r2.URL.RawQuery = q.Encode()
	rec := httptest.NewRecorder()
	reg.ServeHTTP(rec, r2)
	body := rec.Body.String()
	var tl struct {
		Tags []string `json:"tags"`
	}
	if rec.Code == 200 && jsonUnmarshal(body, &tl) == nil && len(tl.Tags) == 2 {
		next := url.Values{"n": {"2"}, "last": {tl.Tags[1]}}
		w.Header().Set("Link", fmt.Sprintf(`<%s?%s>; rel="next"`, r.URL.Path, next.Encode()))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(rec.Code)
	_, _ = io.WriteString(w, body)
}

func (u *upstreamRegistry) requests() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.log)
}

func (u *upstreamRegistry) reset() {
	u.mu.Lock()
	u.log = nil
	u.mu.Unlock()
}

// fetches are the GETs of manifests and blobs in the log.
func fetches(log []string) []string {
	var out []string
	for _, l := range log {
		if strings.HasPrefix(l, "GET ") && (strings.Contains(l, "/manifests/") || strings.Contains(l, "/blobs/")) {
			out = append(out, strings.TrimPrefix(l, "GET "))
		}
	}
	slices.Sort(out)
	return out
}

func (u *upstreamRegistry) ref(s string) name.Reference {
	pu, _ := url.Parse(u.push.URL)
	ref, err := name.ParseReference(pu.Host+"/"+s, name.Insecure)
	if err != nil {
		u.t.Fatal(err)
	}
	return ref
}

var platforms = []v1.Platform{
	{OS: "linux", Architecture: "amd64"},
	{OS: "linux", Architecture: "arm64", Variant: "v8"},
	{OS: "linux", Architecture: "s390x"},
}

// seeded is what the upstream holds of one multi-platform tag.
type seeded struct {
	index  v1.Hash
	images map[string]v1.Image // by platform "os/arch"
}

// pushIndex writes a three-platform index of random images to repo:tag.
func (u *upstreamRegistry) pushIndex(repo, tag string) seeded {
	u.t.Helper()
	s := seeded{images: map[string]v1.Image{}}
	var idx v1.ImageIndex = empty.Index
	for _, p := range platforms {
		img, err := random.Image(512, 2)
		if err != nil {
			u.t.Fatal(err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
		s.images[p.OS+"/"+p.Architecture] = img
	}
	if err := remote.WriteIndex(u.ref(repo+":"+tag), idx); err != nil {
		u.t.Fatal(err)
	}
	var err error
	if s.index, err = idx.Digest(); err != nil {
		u.t.Fatal(err)
	}
	return s
}

// wantFetches is every manifest and blob GET a sync of tags (with the
// platforms given) should make: the index by tag, each selected child by
// digest, its config and layers.
func wantFetches(t *testing.T, repo string, tags map[string]seeded, plats ...string) []string {
	var out []string
	for tag, s := range tags {
		out = append(out, "/v2/"+repo+"/manifests/"+tag)
		for _, p := range plats {
			img := s.images[p]
			d, _ := img.Digest()
			out = append(out, "/v2/"+repo+"/manifests/"+d.String())
			cd, _ := img.ConfigName()
			out = append(out, "/v2/"+repo+"/blobs/"+cd.String())
			ls, err := img.Layers()
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range ls {
				ld, _ := l.Digest()
				out = append(out, "/v2/"+repo+"/blobs/"+ld.String())
			}
		}
	}
	slices.Sort(out)
	return out
}

// local is the caching registry: a store, a handler with one mirror of
// the upstream, served over HTTP for pulls.
type local struct {
	store *cache.Store
	h     *registry.Handler
	m     *registry.Mirror
	srv   *httptest.Server
}

func newLocal(t *testing.T, up *upstreamRegistry, mod func(*registry.MirrorConfig)) *local {
	t.Helper()
	store, err := cache.Open(cache.Options{Dir: t.TempDir(), Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	cfg := registry.MirrorConfig{Prefix: "up.test", Upstreams: []string{up.srv.URL}, Logger: zaptest.NewLogger(t)}
	if mod != nil {
		mod(&cfg)
	}
	m, err := registry.NewMirror(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h, err := registry.NewHandler(registry.Config{Store: store, Mirrors: []*registry.Mirror{m}, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		srv.Close()
		if err := store.Close(); err != nil {
			t.Error(err)
		}
	})
	return &local{store: store, h: h, m: m, srv: srv}
}

func newSync(t *testing.T, src mirrorsync.Source, content ...mirrorsync.Content) *mirrorsync.Sync {
	t.Helper()
	s, err := mirrorsync.New(mirrorsync.Config{Content: content, Concurrency: 3, Logger: zaptest.NewLogger(t)}, src)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// seedApp fills lib/app with version tags and others, and lib/other.
func seedApp(up *upstreamRegistry) map[string]seeded {
	tags := map[string]seeded{}
	for _, tag := range []string{"3.16", "3.17", "3.18.1", "3.19", "3.20", "4.0", "latest", "edge"} {
		tags[tag] = up.pushIndex("lib/app", tag)
	}
	up.pushIndex("lib/other", "3.19")
	return tags
}

// The acceptance filter: a semver range, two platforms, the newest 3.
var appContent = mirrorsync.Content{
	Repository: "lib/app",
	Semver:     ">=3.17 <4",
	Platforms:  []string{"linux/amd64", "linux/arm64"},
	Latest:     3,
}

// TestSyncFetchesExactlyTheSelection: a run fetches the newest three
// versions in range, two of three platforms, and nothing else; the
// indexes are stored whole; a second run fetches nothing.
func TestSyncFetchesExactlyTheSelection(t *testing.T) {
	up := newUpstream(t)
	tags := seedApp(up)
	loc := newLocal(t, up, nil)
	up.reset()
	s := newSync(t, loc.h.SyncSource(loc.m), appContent)

	st := s.Run(context.Background())
	if st.ErrorCount != 0 || st.Tags != 3 || st.Repositories != 1 {
		t.Fatalf("first run: %+v", st)
	}
	selected := map[string]seeded{"3.18.1": tags["3.18.1"], "3.19": tags["3.19"], "3.20": tags["3.20"]}
	want := wantFetches(t, "lib/app", selected, "linux/amd64", "linux/arm64")
	if got := fetches(up.requests()); !slices.Equal(got, want) {
		t.Errorf("upstream GETs:\n got %q\nwant %q", got, want)
	}
	for _, l := range up.requests() {
		if strings.Contains(l, "lib/other") {
			t.Errorf("a repository outside the filter was asked for: %s", l)
		}
	}
	if st.ManifestsFetched != 9 || st.BlobsFetched != 18 {
		t.Errorf("counts %+v, want 9 manifests and 18 blobs", st)
	}
	// Each index is stored byte for byte, tagged, although its s390x
	// child is not.
	for tag, s := range selected {
		d, err := loc.store.ResolveTag(t.Context(), "up.test/lib/app", tag)
		if err != nil || d.String() != s.index.String() {
			t.Errorf("tag %s: %s, %v; want %s", tag, d, err, s.index)
		}
		s390, _ := s.images["linux/s390x"].Digest()
		sd, _ := cache.ParseDigest(s390.String())
		if _, err := loc.store.StatManifest(t.Context(), "up.test/lib/app", sd); err == nil {
			t.Errorf("tag %s: the s390x child was fetched", tag)
		}
	}

	up.reset()
	st = s.Run(context.Background())
	if st.ErrorCount != 0 || st.ManifestsFetched != 0 || st.BlobsFetched != 0 {
		t.Errorf("second run: %+v", st)
	}
	if got := fetches(up.requests()); len(got) != 0 {
		t.Errorf("second run fetched %q", got)
	}
	heads := 0
	for _, l := range up.requests() {
		if strings.HasPrefix(l, "HEAD ") && strings.Contains(l, "/manifests/") {
			heads++
		}
	}
	if heads != 3 {
		t.Errorf("second run: %d manifest HEADs, want 3 (one per tag)\n%q", heads, up.requests())
	}
}

// TestPullAfterSyncStaysLocal: pulls of the synced tags (index, the
// platforms synced, their blobs) cause no upstream GET of a manifest or
// blob.
func TestPullAfterSyncStaysLocal(t *testing.T) {
	up := newUpstream(t)
	tags := seedApp(up)
	loc := newLocal(t, up, nil)
	s := newSync(t, loc.h.SyncSource(loc.m), appContent)
	if st := s.Run(context.Background()); st.ErrorCount != 0 {
		t.Fatalf("run: %+v", st)
	}
	up.reset()
	lu, _ := url.Parse(loc.srv.URL)
	for _, tag := range []string{"3.18.1", "3.19", "3.20"} {
		for _, p := range []v1.Platform{platforms[0], platforms[1]} {
			ref, err := name.ParseReference(lu.Host+"/up.test/lib/app:"+tag, name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			img, err := remote.Image(ref, remote.WithPlatform(p))
			if err != nil {
				t.Fatalf("pull %s %s: %v", tag, p, err)
			}
			want, _ := tags[tag].images[p.OS+"/"+p.Architecture].Digest()
			if got, _ := img.Digest(); got != want {
				t.Errorf("pull %s %s: %s, want %s", tag, p, got, want)
			}
			ls, _ := img.Layers()
			for _, l := range ls {
				rc, err := l.Compressed()
				if err != nil {
					t.Fatal(err)
				}
				if _, err := io.Copy(io.Discard, rc); err != nil {
					t.Fatal(err)
				}
				rc.Close()
			}
		}
	}
	if got := fetches(up.requests()); len(got) != 0 {
		t.Errorf("pulls after sync fetched from upstream: %q", got)
	}
}

// TestSyncSurvives429: upstream limits the first requests with 429 and
// Retry-After; the run waits and completes.
func TestSyncSurvives429(t *testing.T) {
	up := newUpstream(t)
	tags := seedApp(up)
	loc := newLocal(t, up, func(c *registry.MirrorConfig) { c.MaxRetries = -1 }) // sync's own retries, not the client's
	up.reset()
	up.mu.Lock()
	up.failN, up.retryAfter = 2, "1"
	up.mu.Unlock()
	s := newSync(t, loc.h.SyncSource(loc.m), appContent)
	start := time.Now()
	st := s.Run(context.Background())
	if st.ErrorCount != 0 || st.Tags != 3 {
		t.Fatalf("run under 429: %+v", st)
	}
	if took := time.Since(start); took < time.Second {
		t.Errorf("run took %s: Retry-After 1 was not waited for", took)
	}
	selected := map[string]seeded{"3.18.1": tags["3.18.1"], "3.19": tags["3.19"], "3.20": tags["3.20"]}
	for _, f := range wantFetches(t, "lib/app", selected, "linux/amd64", "linux/arm64") {
		if !slices.Contains(fetches(up.requests()), f) {
			t.Errorf("never fetched %s", f)
		}
	}
}

// TestSyncUpstreamDownMidRun: upstream dies partway; the run ends with
// errors and the next run, with upstream back, completes.
func TestSyncUpstreamDownMidRun(t *testing.T) {
	up := newUpstream(t)
	seedApp(up)
	loc := newLocal(t, up, func(c *registry.MirrorConfig) { c.MaxRetries = -1 })
	up.reset()
	up.mu.Lock()
	up.downAfter = 8
	up.mu.Unlock()
	s := newSync(t, loc.h.SyncSource(loc.m), appContent)
	st := s.Run(context.Background())
	if st.ErrorCount == 0 {
		t.Fatalf("run with upstream down: no errors: %+v", st)
	}
	if status := s.Status(); status.LastRun == nil || status.LastRun.ErrorCount != st.ErrorCount || status.Running || len(status.LastRun.Errors) == 0 {
		t.Errorf("status after a failed run: %+v", status)
	}
	up.mu.Lock()
	up.down = false
	up.mu.Unlock()
	st = s.Run(context.Background())
	if st.ErrorCount != 0 || st.Tags != 3 {
		t.Fatalf("run with upstream back: %+v", st)
	}
	up.reset()
	if st = s.Run(context.Background()); st.ManifestsFetched+st.BlobsFetched != 0 || st.ErrorCount != 0 {
		t.Errorf("a third run fetched again: %+v", st)
	}
}

// TestSyncGlobAndRegex: a glob lists the catalog; a tag regex selects.
func TestSyncGlobAndRegex(t *testing.T) {
	up := newUpstream(t)
	seedApp(up)
	loc := newLocal(t, up, nil)
	s := newSync(t, loc.h.SyncSource(loc.m), mirrorsync.Content{Repository: "lib/*", Tags: `^3\.19$`, Platforms: []string{"linux/s390x"}})
	st := s.Run(context.Background())
	if st.ErrorCount != 0 || st.Repositories != 2 || st.Tags != 2 || st.ManifestsFetched != 4 {
		t.Fatalf("glob run: %+v", st)
	}
	for _, repo := range []string{"up.test/lib/app", "up.test/lib/other"} {
		if _, err := loc.store.ResolveTag(t.Context(), repo, "3.19"); err != nil {
			t.Errorf("%s:3.19 not synced: %v", repo, err)
		}
		if _, err := loc.store.ResolveTag(t.Context(), repo, "3.20"); err == nil {
			t.Errorf("%s:3.20 synced against the regex", repo)
		}
	}
}

// TestSyncInto copies into a local prefix: pulls by the local name need
// no upstream at all.
func TestSyncInto(t *testing.T) {
	up := newUpstream(t)
	tags := seedApp(up)
	loc := newLocal(t, up, nil)
	src, err := registry.NewCopySource("copies/hub", registry.MirrorConfig{Upstreams: []string{up.srv.URL}})
	if err != nil {
		t.Fatal(err)
	}
	s := newSync(t, loc.h.SyncSource(src), mirrorsync.Content{Repository: "lib/app", Tags: "^edge$"})
	if st := s.Run(context.Background()); st.ErrorCount != 0 || st.ManifestsFetched != 4 {
		t.Fatalf("sync_into run: %+v", st)
	}
	up.mu.Lock()
	up.down = true
	up.mu.Unlock()
	resp, err := http.Get(loc.srv.URL + "/v2/copies/hub/lib/app/manifests/edge")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != tags["edge"].index.String() {
		t.Errorf("local pull of the copy: %d %s", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"))
	}
}

// TestContentChecks: a bad filter is refused at New, naming the content.
func TestContentChecks(t *testing.T) {
	up := newUpstream(t)
	loc := newLocal(t, up, nil)
	for _, c := range []struct {
		content mirrorsync.Content
		want    string
	}{
		{mirrorsync.Content{Repository: ""}, "not a repository name"},
		{mirrorsync.Content{Repository: "../x"}, "not a repository name"},
		{mirrorsync.Content{Repository: "a", Tags: "("}, "tags"},
		{mirrorsync.Content{Repository: "a", Semver: "newest please"}, "semver"},
		{mirrorsync.Content{Repository: "a", Platforms: []string{"linux"}}, "platform"},
		{mirrorsync.Content{Repository: "a", Latest: -1}, "latest"},
	} {
		_, err := mirrorsync.New(mirrorsync.Config{Content: []mirrorsync.Content{c.content}}, loc.h.SyncSource(loc.m))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error with %q", c.content, err, c.want)
		}
	}
	if _, err := mirrorsync.New(mirrorsync.Config{}, loc.h.SyncSource(loc.m)); err == nil {
		t.Error("a sync without content was accepted")
	}
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }

// TestSyncLibraryPrefix: a one-component name on a mirror with a library
// prefix is synced where a pull of the short name looks (docker.io's
// "alpine" is library/alpine).
func TestSyncLibraryPrefix(t *testing.T) {
	up := newUpstream(t)
	s := up.pushIndex("library/app", "1.0")
	loc := newLocal(t, up, func(c *registry.MirrorConfig) { c.Prefix = "docker.io" })
	sy := newSync(t, loc.h.SyncSource(loc.m), mirrorsync.Content{Repository: "app", Platforms: []string{"linux/amd64"}})
	if st := sy.Run(context.Background()); st.ErrorCount != 0 || st.Tags != 1 {
		t.Fatalf("run: %+v", st)
	}
	if d, err := loc.store.ResolveTag(t.Context(), "docker.io/library/app", "1.0"); err != nil || d.String() != s.index.String() {
		t.Errorf("docker.io/library/app:1.0 = %s, %v", d, err)
	}
	up.reset()
	resp, err := http.Get(loc.srv.URL + "/v2/app/manifests/1.0?ns=docker.io")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || len(fetches(up.requests())) != 0 {
		t.Errorf("pull of the short name: %d, upstream %q", resp.StatusCode, up.requests())
	}
}

// TestSyncUpstreamPrefix: on a mirror with an upstream prefix (zot's
// stripped content prefix) upstream's vendor/tools/a/b is stored and
// pulled as <prefix>/a/b, docker.io's library prefix is not added, and
// upstream names outside the upstream prefix are not the mirror's.
func TestSyncUpstreamPrefix(t *testing.T) {
	up := newUpstream(t)
	deep := up.pushIndex("vendor/tools/a/b", "1.0")
	up.pushIndex("vendor/tools/c", "1.0")
	up.pushIndex("other/d", "1.0")
	loc := newLocal(t, up, func(c *registry.MirrorConfig) { c.Prefix, c.UpstreamPrefix = "docker.io", "vendor/tools" })
	if !loc.m.ServesUpstream("vendor/tools/a/b") || loc.m.ServesUpstream("other/d") || loc.m.ServesUpstream("vendor/tools") {
		t.Error("ServesUpstream: the upstream prefix is not what decides")
	}
	sy := newSync(t, loc.h.SyncSource(loc.m), mirrorsync.Content{Repository: "**", Platforms: []string{"linux/amd64"}})
	if st := sy.Run(context.Background()); st.Tags != 2 {
		t.Fatalf("run: %+v", st)
	}
	if d, err := loc.store.ResolveTag(t.Context(), "docker.io/a/b", "1.0"); err != nil || d.String() != deep.index.String() {
		t.Errorf("docker.io/a/b:1.0 = %s, %v", d, err)
	}
	if _, err := loc.store.ResolveTag(t.Context(), "docker.io/c", "1.0"); err != nil {
		t.Errorf("docker.io/c:1.0 (one component, no library/): %v", err)
	}
	for path, want := range map[string]int{
		"/v2/a/b/manifests/1.0?ns=docker.io":     200,
		"/v2/c/manifests/1.0?ns=docker.io":       200,
		"/v2/other/d/manifests/1.0?ns=docker.io": 404, // upstream's vendor/tools/other/d
	} {
		resp, err := http.Get(loc.srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s: %d, want %d", path, resp.StatusCode, want)
		}
	}
	if _, err := registry.NewMirror(registry.MirrorConfig{Prefix: "v", LibraryPrefix: "lib", UpstreamPrefix: "vendor"}); err == nil {
		t.Error("library_prefix with upstream_prefix accepted")
	}
	if _, err := registry.NewMirror(registry.MirrorConfig{Prefix: "v", UpstreamPrefix: "Vendor/../x"}); err == nil {
		t.Error("an upstream_prefix that is no name accepted")
	}
}

// TestStartTriggerStop: the schedule waits for its first run, Trigger
// runs it now, the status shows the next run as soon as the last one
// ended, and cancelling the context ends Start.
func TestStartTriggerStop(t *testing.T) {
	up := newUpstream(t)
	seedApp(up)
	loc := newLocal(t, up, nil)
	s, err := mirrorsync.New(mirrorsync.Config{Content: []mirrorsync.Content{appContent}, FirstDelay: time.Hour, Every: time.Hour,
		Logger: zaptest.NewLogger(t)}, loc.h.SyncSource(loc.m))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Start(ctx); close(done) }()
	if !s.Trigger() {
		t.Fatal("Trigger refused on an idle sync")
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := s.Status()
		if st.LastEnd != nil {
			if st.NextRun == nil || st.NextRun.Before(*st.LastEnd) || st.LastRun.Tags != 3 || st.LastRun.ErrorCount != 0 {
				t.Errorf("status after a triggered run: %+v %+v", st, st.LastRun)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the triggered run never ended")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Start did not return after its context ended")
	}
}

// TestSyncZotGlobs: a content repository is read as access patterns are
// (zot's globs: classes, [!...], {a,b}), so a zot sync prefix such as
// lib/{app,tools} syncs on its schedule. Before, a content with a class
// or braces was refused at New as no repository name or glob (the zot
// adapter then dropped the schedule with a warning).
func TestSyncZotGlobs(t *testing.T) {
	up := newUpstream(t)
	seedApp(up)
	up.pushIndex("lib/zzz", "3.19")
	loc := newLocal(t, up, nil)
	for _, c := range []struct {
		repo string
		want []string
	}{
		{"lib/{app,other}", []string{"lib/app", "lib/other"}},
		{"lib/[!a]*", []string{"lib/other", "lib/zzz"}},
		{"{lib,x}/[ao]*", []string{"lib/app", "lib/other"}},
	} {
		s := newSync(t, loc.h.SyncSource(loc.m), mirrorsync.Content{Repository: c.repo, Tags: `^3\.19$`, Platforms: []string{"linux/s390x"}})
		if st := s.Run(context.Background()); st.ErrorCount != 0 || st.Repositories != len(c.want) {
			t.Errorf("%s: run %+v, want %d repositories", c.repo, st, len(c.want))
		}
		for _, repo := range c.want {
			if _, err := loc.store.ResolveTag(t.Context(), "up.test/"+repo, "3.19"); err != nil {
				t.Errorf("%s: %s:3.19 not synced: %v", c.repo, repo, err)
			}
		}
	}
	for _, bad := range []string{"lib/{app", "lib/app}", "lib/[a"} {
		if _, err := mirrorsync.New(mirrorsync.Config{Content: []mirrorsync.Content{{Repository: bad}}}, loc.h.SyncSource(loc.m)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestSyncIntoUpstreamDownMidRun: a sync_into run that the upstream
// leaves midway sets no tag whose children or blobs are partly missing
// (the prefix is local content: no pull fills it), at whatever request
// the upstream went; the next run sets every tag, whole.
func TestSyncIntoUpstreamDownMidRun(t *testing.T) {
	ctx := context.Background()
	for _, after := range []int{5, 17} {
		up := newUpstream(t)
		tags := seedApp(up)
		loc := newLocal(t, up, nil)
		src, err := registry.NewCopySource("copies/hub", registry.MirrorConfig{Upstreams: []string{up.srv.URL}, MaxRetries: -1})
		if err != nil {
			t.Fatal(err)
		}
		content := mirrorsync.Content{Repository: "lib/app", Semver: ">=3.17 <4"}
		s := newSync(t, loc.h.SyncSource(src), content)
		up.mu.Lock()
		up.downAfter = after
		up.mu.Unlock()
		first := s.Run(ctx)
		whole := func(when string) int {
			n := 0
			for tag, sd := range tags {
				d, err := loc.store.ResolveTag(ctx, "copies/hub/lib/app", tag)
				if err != nil {
					continue
				}
				n++
				if d.String() != sd.index.String() {
					t.Errorf("down after %d, %s: %s at %s, want %s", after, when, tag, d, sd.index)
				}
				for p, img := range sd.images {
					md, _ := img.Digest()
					cd, _ := img.ConfigName()
					ls, _ := img.Layers()
					ds := []string{cd.String()}
					for _, l := range ls {
						ld, _ := l.Digest()
						ds = append(ds, ld.String())
					}
					if _, _, err := loc.store.GetManifest(ctx, "copies/hub/lib/app", mustDigest(t, md.String())); err != nil {
						t.Errorf("down after %d, %s: tag %s set, its %s manifest: %v", after, when, tag, p, err)
						continue
					}
					for _, bd := range ds {
						if _, err := loc.store.HasBlob(ctx, "copies/hub/lib/app", mustDigest(t, bd)); err != nil {
							t.Errorf("down after %d, %s: tag %s set, blob %s of its %s image: %v", after, when, tag, bd, p, err)
						}
					}
				}
			}
			return n
		}
		n := whole("after the failed run")
		t.Logf("upstream down after %d requests: %d errors, %d tags set", after, first.ErrorCount, n)
		up.mu.Lock()
		up.down, up.downAfter = false, 0
		up.mu.Unlock()
		if st := s.Run(ctx); st.ErrorCount != 0 || st.Tags != 4 {
			t.Errorf("down after %d: the run after: %+v", after, st)
		}
		if n := whole("after the next run"); n != 4 {
			t.Errorf("down after %d: %d tags set after the next run, want 4", after, n)
		}
	}
}
