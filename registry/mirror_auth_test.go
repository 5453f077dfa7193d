package registry

// What a caller may learn through a mirror about repositories it cannot
// read: the store holds blobs once for every repository, so each path
// that finds a blob by digest must not answer from another repository's
// copy unless upstream confirms it for the caller's own name (or the
// caller may read that repository).

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"golang.org/x/crypto/bcrypt"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/cache"
)

// authMirrorEnv mirrors docker.io (env.up) and ghcr.io (env.ghcr) from
// upstreams that hold blobs per repository, under the policy of issue
// 10's review: anyone reads docker.io/** and ghcr.io/**, only alice reads
// docker.io/private/**; locally anyone reads and pushes open/**, only
// alice secret/**.
type authMirrorEnv struct {
	*mirrorEnv
	ghcr *fakeUpstream
}

var alice = []string{"Authorization", "Basic " + base64.StdEncoding.EncodeToString([]byte("alice:alice-pw"))}

func newAuthMirrorEnv(t *testing.T) *authMirrorEnv {
	t.Helper()
	docker, ghcr := newFakeUpstream(t), newFakeUpstream(t)
	docker.strictBlobs, ghcr.strictBlobs = true, true
	var mirrors []*Mirror
	var spaces []authscope.Namespace
	for _, mc := range []MirrorConfig{
		{Prefix: "docker.io", Upstreams: []string{docker.srv.URL}},
		{Prefix: "ghcr.io", Upstreams: []string{ghcr.srv.URL}},
	} {
		m, err := NewMirror(mc)
		if err != nil {
			t.Fatal(err)
		}
		mirrors = append(mirrors, m)
		spaces = append(spaces, m.Namespace())
	}
	names, err := authscope.NewNames(spaces, nil)
	if err != nil {
		t.Fatal(err)
	}
	hash, _ := bcrypt.GenerateFromPassword([]byte("alice-pw"), bcrypt.MinCost)
	hp, err := authscope.ParseHtpasswd([]byte("alice:" + string(hash) + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	read := []string{authscope.ActionRead}
	pol, err := authscope.NewPolicy(authscope.PolicyConfig{Repositories: map[string]authscope.RepositoryPolicy{
		"docker.io/**":         {Anonymous: read},
		"docker.io/private/**": {Policies: []authscope.Grant{{Users: []string{"alice"}, Actions: read}}},
		"ghcr.io/**":           {Anonymous: read},
		"open/**":              {Anonymous: []string{authscope.ActionRead, authscope.ActionCreate}},
		"secret/**":            {Policies: []authscope.Grant{{Users: []string{"alice"}, Actions: []string{authscope.ActionRead, authscope.ActionCreate}}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	a, err := authscope.NewAuthorizer(authscope.Options{Htpasswd: hp, Policy: pol, Names: names, BasicRealm: "test"})
	if err != nil {
		t.Fatal(err)
	}
	tr := newTestRegistry(t, func(c *Config) {
		c.Mirrors = mirrors
		c.Authorizer = a
		c.CanRead = a.CanRead
	})
	return &authMirrorEnv{mirrorEnv: &mirrorEnv{testRegistry: tr, up: docker, mirror: mirrors[0]}, ghcr: ghcr}
}

// pullPrivate has alice pull a layer of docker.io/private/app whole, so
// the store holds it (for that repository only); it returns the layer.
func (env *authMirrorEnv) pullPrivate(t *testing.T, size int64) (string, []byte) {
	t.Helper()
	img := randomImage(t, size, 1)
	env.up.pushImage("private/app", "v1", img)
	layer, data := layerOf(t, img)
	got := env.do(http.MethodGet, "/v2/docker.io/private/app/blobs/"+layer, nil, alice...)
	env.wantStatus(got, http.StatusOK)
	if string(got.body) != string(data) {
		t.Fatal("alice's blob differs")
	}
	env.wantError(env.do(http.MethodGet, "/v2/docker.io/private/app/blobs/"+layer, nil), http.StatusUnauthorized, CodeUnauthorized)
	env.waitFill(layer)
	return layer, data
}

// waitFill waits until a fill of digest, if one runs, has ended.
func (env *authMirrorEnv) waitFill(digest string) {
	d, _ := cache.ParseDigest(digest)
	if f := env.store.Filling(env.t.Context(), d); f != nil {
		<-f.Done()
	}
}

// wantUnlinked fails if repo links digest.
func (env *authMirrorEnv) wantUnlinked(t *testing.T, repo, digest string) {
	t.Helper()
	d, _ := cache.ParseDigest(digest)
	if _, err := env.store.HasBlob(t.Context(), repo, d); !errors.Is(err, cache.ErrBlobUnknown) {
		t.Errorf("%s links %s: %v", repo, digest, err)
	}
}

// answer is all a client and the upstream see of one request, with the
// digest asked for written as <digest>.
type answer struct {
	Status   int
	Body     string
	Header   http.Header
	Upstream []string
}

func (env *authMirrorEnv) answer(method, format, digest string, up *fakeUpstream, hdr ...string) answer {
	var before int
	if up != nil {
		before = len(up.requests())
	}
	resp := env.do(method, sprintfPath(format, digest), nil, hdr...)
	a := answer{Status: resp.StatusCode, Body: strings.ReplaceAll(string(resp.body), digest, "<digest>"), Header: resp.Header.Clone()}
	a.Header.Del("Date")
	if up != nil {
		a.Upstream = up.requests()[before:]
	}
	return a
}

// wantSameAnswer fails unless a request for digest (which the store holds
// for a repository the caller cannot read) at format (a path with %s for
// the digest) is answered exactly as one for a digest the store has never
// seen.
func (env *authMirrorEnv) wantSameAnswer(t *testing.T, method, format, digest string, up *fakeUpstream) answer {
	t.Helper()
	unknown := cache.FromBytes(cache.SHA256, []byte("never stored: "+t.Name())).String()
	// Each answer from an upstream not held by the 429 of the one before
	// (the hold is the mirror's, whatever the digest).
	// And each a first time: upstream's "not found" for a name asked
	// before is remembered (not_found_ttl), whatever the store holds.
	env.waitUnheld()
	env.forgetNotFound()
	got := env.answer(method, format, digest, up)
	env.waitUnheld()
	env.forgetNotFound()
	want := env.answer(method, format, unknown, up)
	if got.Status == http.StatusOK {
		t.Errorf("%s %s: 200 for what only a private repository holds", method, format)
	}
	if !reflect.DeepEqual(got.seen(), want.seen()) {
		t.Errorf("%s %s: a digest the store holds elsewhere is answered\n  %+v\nbut one it lacks\n  %+v", method, format, got, want)
	}
	return got
}

// seen is the answer as the caller sees it, with the upstream requests
// it caused, each upstream blob request counted as one question about
// its repository, GET or HEAD: a cold GET asks with the fill's GET where
// a GET of a digest the store holds asks with a HEAD (mirrorBlobGet).
// The caller sees neither, only the answer each gets in one round trip,
// which must be the same.
//
// Retries are not told apart either: how many attempts a request makes
// of an upstream answering 429, and the Retry-After it then carries,
// follow the upstream's hold (upstream.Client), which the requests
// before set, whatever the digest.
func (a answer) seen() answer {
	a.Upstream = slices.Clone(a.Upstream)
	for i, r := range a.Upstream {
		if method, rest, _ := strings.Cut(r, " "); strings.HasPrefix(rest, "blobs ") && (method == http.MethodGet || method == http.MethodHead) {
			a.Upstream[i] = "GET|HEAD " + rest
		}
	}
	a.Upstream = slices.Compact(a.Upstream)
	a.Header = a.Header.Clone()
	a.Header.Del("Retry-After")
	return a
}

// TestMirrorBlobFallbackNeedsRead (issue 10, M1): while upstream fails for
// a name, a blob that only a private repository of the same mirror holds
// is neither served nor linked under that name; a copy in a repository
// the caller may read is served, but not linked.
func TestMirrorBlobFallbackNeedsRead(t *testing.T) {
	for _, tc := range []struct {
		name string
		fail func(env *authMirrorEnv)
	}{
		{"503", func(env *authMirrorEnv) {
			env.up.set(func(u *fakeUpstream) { u.failRepos["library/flaky"] = http.StatusServiceUnavailable })
		}},
		{"429", func(env *authMirrorEnv) {
			env.up.set(func(u *fakeUpstream) { u.failRepos["library/flaky"] = http.StatusTooManyRequests })
		}},
		{"unreachable", func(env *authMirrorEnv) { env.up.srv.Close() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newAuthMirrorEnv(t)
			layer, _ := env.pullPrivate(t, 64<<10)
			pub := randomImage(t, 4096, 1)
			env.up.pushImage("library/public", "v1", pub)
			pubLayer, pubData := layerOf(t, pub)
			env.wantStatus(env.do(http.MethodGet, "/v2/docker.io/library/public/blobs/"+pubLayer, nil), http.StatusOK)
			env.waitFill(pubLayer)
			tc.fail(env)

			for _, method := range []string{http.MethodGet, http.MethodHead} {
				got := env.wantSameAnswer(t, method, "/v2/docker.io/library/flaky/blobs/%s", layer, env.up)
				if got.Status < 400 {
					t.Errorf("%s while upstream fails: %d", method, got.Status)
				}
			}
			env.wantUnlinked(t, "docker.io/library/flaky", layer)

			// What the caller may read anyway is served, and not linked.
			got := env.do(http.MethodGet, "/v2/docker.io/library/flaky/blobs/"+pubLayer, nil)
			env.wantStatus(got, http.StatusOK)
			if string(got.body) != string(pubData) {
				t.Error("readable copy differs")
			}
			env.wantUnlinked(t, "docker.io/library/flaky", pubLayer)

			if tc.name != "unreachable" {
				// Upstream back, and it does not hold the blob there
				// (asked once its last 429's hold has passed).
				env.up.set(func(u *fakeUpstream) { delete(u.failRepos, "library/flaky") })
				env.waitUnheld()
				env.wantError(env.do(http.MethodGet, "/v2/docker.io/library/flaky/blobs/"+layer, nil), http.StatusNotFound, CodeBlobUnknown)
				env.wantError(env.do(http.MethodGet, "/v2/docker.io/library/flaky/blobs/"+pubLayer, nil), http.StatusNotFound, CodeBlobUnknown)
			}
			env.wantStatus(env.do(http.MethodGet, "/v2/docker.io/private/app/blobs/"+layer, nil, alice...), http.StatusOK)
		})
	}
}

// TestMirrorFillJoinNeedsUpstream (issue 10, M2): while alice's cold pull
// of a private layer fills, a request for the same digest under another
// name (of the same mirror or another) joins the fill only once its own
// upstream confirmed the digest there; then it still shares the one
// upstream fetch.
func TestMirrorFillJoinNeedsUpstream(t *testing.T) {
	env := newAuthMirrorEnv(t)
	priv := randomImage(t, 1<<20, 1)
	env.up.pushImage("private/app", "v1", priv)
	layer, data := layerOf(t, priv)
	ls, err := priv.Layers()
	if err != nil {
		t.Fatal(err)
	}
	shared, err := mutate.AppendLayers(empty.Image, ls[0])
	if err != nil {
		t.Fatal(err)
	}
	env.up.pushImage("library/shared", "v1", shared)
	env.up.pushImage("library/public", "v1", randomImage(t, 1024, 1))
	gate := make(chan struct{})
	env.up.set(func(u *fakeUpstream) { u.gate = gate })
	ctx := t.Context()

	resp, err := env.get(ctx, "/v2/docker.io/private/app/blobs/"+layer, alice...)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("alice's cold pull: %v %v", resp, err)
	}
	defer resp.Body.Close()
	first := make([]byte, 1)
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		t.Fatal(err)
	}
	// The fill is running, held after upstream's first chunk.
	for _, path := range []string{
		"/v2/docker.io/library/public/blobs/" + layer,
		"/v2/ghcr.io/some/app/blobs/" + layer,
	} {
		probe, err := env.get(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(io.LimitReader(probe.Body, 512))
		probe.Body.Close()
		if probe.StatusCode != http.StatusNotFound || !strings.Contains(string(body), CodeBlobUnknown) {
			t.Errorf("%s during a private fill: %d %s", path, probe.StatusCode, body)
		}
	}
	joined, err := env.get(ctx, "/v2/docker.io/library/shared/blobs/"+layer)
	if err != nil || joined.StatusCode != http.StatusOK {
		t.Fatalf("a name upstream confirms: %v %v", joined, err)
	}
	defer joined.Body.Close()
	close(gate)
	rest, err := io.ReadAll(resp.Body)
	if err != nil || string(append(first, rest...)) != string(data) {
		t.Fatalf("alice's blob: %d bytes, %v", len(rest)+1, err)
	}
	if got, err := io.ReadAll(joined.Body); err != nil || string(got) != string(data) {
		t.Fatalf("joined blob: %d bytes, %v", len(got), err)
	}
	if n := env.up.count("GET blobs"); n != 1 {
		t.Errorf("upstream blob GETs = %d, want 1 (the joiner shares the fill)", n)
	}
	if n := env.ghcr.count("GET blobs"); n != 0 {
		t.Errorf("ghcr.io upstream blob GETs = %d", n)
	}
	env.waitFill(layer)
	env.wantUnlinked(t, "docker.io/library/public", layer)
	env.wantUnlinked(t, "ghcr.io/some/app", layer)
	env.wantSameAnswer(t, http.MethodGet, "/v2/docker.io/library/public/blobs/%s", layer, env.up)
	env.wantSameAnswer(t, http.MethodGet, "/v2/ghcr.io/some/app/blobs/%s", layer, env.ghcr)
}

// TestMirrorBlobExistenceHidden (issue 10, L5): a blob GET or HEAD under a
// name upstream does not hold the digest for is answered the same,
// status, body, headers and upstream requests, whether or not the store
// holds the digest for a repository the caller cannot read. So is a
// manifest by digest.
func TestMirrorBlobExistenceHidden(t *testing.T) {
	env := newAuthMirrorEnv(t)
	layer, _ := env.pullPrivate(t, 16<<10)
	env.up.pushImage("library/public", "v1", randomImage(t, 1024, 1))
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		for _, repo := range []string{"docker.io/library/public", "docker.io/library/absent"} {
			got := env.wantSameAnswer(t, method, "/v2/"+repo+"/blobs/%s", layer, env.up)
			if got.Status != http.StatusNotFound {
				t.Errorf("%s %s: %d, want 404", method, repo, got.Status)
			}
		}
		env.wantSameAnswer(t, method, "/v2/ghcr.io/some/app/blobs/%s", layer, env.ghcr)
	}
	env.wantUnlinked(t, "docker.io/library/public", layer)

	// Manifests by digest: the private manifest is not served elsewhere.
	resp := env.do(http.MethodGet, "/v2/docker.io/private/app/manifests/v1", nil, alice...)
	env.wantStatus(resp, http.StatusOK)
	dg := resp.Header.Get("Docker-Content-Digest")
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		env.wantSameAnswer(t, method, "/v2/docker.io/library/public/manifests/%s", dg, env.up)
		env.wantSameAnswer(t, method, "/v2/docker.io/library/public/blobs/%s", dg, env.up)
		env.wantSameAnswer(t, method, "/v2/ghcr.io/some/app/manifests/%s", dg, env.ghcr)
	}
}

// TestLocalExistenceHidden: the same for local repositories. What only
// alice's secret/app holds (a blob, a manifest, a referrer) is answered
// under open/app as a digest nobody holds, and mounting it into open/app,
// from anywhere, answers as for an unknown digest and links nothing.
func TestLocalExistenceHidden(t *testing.T) {
	env := newAuthMirrorEnv(t)
	push := func(repo string, data []byte) string {
		d := cache.FromBytes(cache.SHA256, data).String()
		env.wantStatus(env.do(http.MethodPost, "/v2/"+repo+"/blobs/uploads/?digest="+d, data, alice...), http.StatusCreated)
		return d
	}
	cfg := []byte(`{"architecture":"amd64","os":"linux"}`)
	cd := push("secret/app", cfg)
	layer := push("secret/app", []byte("alice's secret layer"))
	subject := cache.FromBytes(cache.SHA256, []byte("a subject")).String()
	man := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":20}],"subject":{"mediaType":%q,"digest":%q,"size":2}}`,
		mtManifest, cd, len(cfg), layer, mtManifest, subject)
	resp := env.do(http.MethodPut, "/v2/secret/app/manifests/v1", man, append([]string{"Content-Type", mtManifest}, alice...)...)
	env.wantStatus(resp, http.StatusCreated)
	md := resp.Header.Get("Docker-Content-Digest")
	env.wantError(env.do(http.MethodGet, "/v2/secret/app/blobs/"+layer, nil), http.StatusUnauthorized, CodeUnauthorized)

	for _, method := range []string{http.MethodGet, http.MethodHead} {
		for _, d := range []string{layer, md} {
			env.wantSameAnswer(t, method, "/v2/open/app/blobs/%s", d, nil)
			env.wantSameAnswer(t, method, "/v2/open/app/manifests/%s", d, nil)
		}
	}
	ref := env.answer(http.MethodGet, "/v2/open/app/referrers/%s", subject, nil)
	if unknown := env.answer(http.MethodGet, "/v2/open/app/referrers/%s", layer, nil); !reflect.DeepEqual(ref, unknown) ||
		!strings.Contains(ref.Body, `"manifests":[]`) {
		t.Errorf("referrers of a private subject: %+v; of another digest: %+v", ref, unknown)
	}

	for _, from := range []string{"", "secret/app", "docker.io/private/app", "open/other"} {
		mount := "/v2/open/app/blobs/uploads/?mount=%s"
		if from != "" {
			mount += "&from=" + from
		}
		got := env.answer(http.MethodPost, mount, layer, nil)
		want := env.answer(http.MethodPost, mount, cache.FromBytes(cache.SHA256, []byte("never stored")).String(), nil)
		if got.Status != want.Status || got.Body != want.Body || got.Status == http.StatusCreated {
			t.Errorf("mount from %q: %d %s; of an unknown digest: %d %s", from, got.Status, got.Body, want.Status, want.Body)
		}
		env.wantUnlinked(t, "open/app", layer)
	}
}

// TestMirrorColdBlobOneRoundTrip (issue 14): a GET of a blob the store
// neither holds nor fills asks upstream once, with the fill's GET, and
// with the token fetched up front once upstream asked for tokens: no
// HEAD first, no 401.
func TestMirrorColdBlobOneRoundTrip(t *testing.T) {
	env := newMirrorEnv(t)
	env.up.set(func(u *fakeUpstream) { u.tokens, u.tokenTTL = true, 300 })
	for _, repo := range []string{"library/first", "library/second"} {
		img := randomImage(t, 4096, 1)
		env.up.pushImage(repo, "v1", img)
		layer, data := layerOf(t, img)
		before := len(env.up.requests())
		resp := env.do(http.MethodGet, "/v2/docker.io/"+repo+"/blobs/"+layer, nil)
		env.wantStatus(resp, http.StatusOK)
		if string(resp.body) != string(data) {
			t.Fatalf("%s: blob differs", repo)
		}
		want := []string{"GET blobs " + repo}
		if repo == "library/first" {
			// The first request to upstream learns that it wants tokens.
			want = []string{"GET blobs " + repo, "GET blobs " + repo}
		}
		if got := env.up.requests()[before:]; !slices.Equal(got, want) {
			t.Errorf("%s: upstream saw %v, want %v", repo, got, want)
		}
	}
	if n := env.up.count("GET token"); n != 2 {
		t.Errorf("token requests = %d, want 2 (one per repository)", n)
	}
}

// TestMirrorJoinOfRefusedFill: a GET that joins a cold fill another name
// started, which upstream then refuses for that name, fetches the blob
// for its own name, which upstream confirmed, instead of failing.
func TestMirrorJoinOfRefusedFill(t *testing.T) {
	env := newAuthMirrorEnv(t)
	img := randomImage(t, 64<<10, 1)
	env.up.pushImage("library/holder", "v1", img)
	layer, data := layerOf(t, img)
	refusing := make(chan struct{})
	env.up.set(func(u *fakeUpstream) { u.refusing = refusing })

	refused := make(chan *http.Response, 1)
	go func() {
		resp, err := env.get(t.Context(), "/v2/docker.io/library/other/blobs/"+layer)
		if err != nil {
			t.Error(err)
			close(refused)
			return
		}
		resp.Body.Close()
		refused <- resp
	}()
	waitUpstream(t, env.up, "GET blobs library/other")
	joined := make(chan *http.Response, 1)
	go func() {
		resp, err := env.get(t.Context(), "/v2/docker.io/library/holder/blobs/"+layer)
		if err != nil {
			t.Error(err)
			close(joined)
			return
		}
		joined <- resp
	}()
	waitUpstream(t, env.up, "HEAD blobs library/holder")
	time.Sleep(200 * time.Millisecond) // it joins the refused fill and waits
	close(refusing)

	if resp := <-refused; resp == nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("the name upstream refuses: %v", resp)
	}
	resp := <-joined
	if resp == nil {
		t.FailNow()
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || err != nil || string(body) != string(data) {
		t.Fatalf("the name upstream confirms: %d, %d bytes, %v", resp.StatusCode, len(body), err)
	}
	env.waitFill(layer)
	env.wantUnlinked(t, "docker.io/library/other", layer)
}

// waitUpstream waits until up has seen request.
func waitUpstream(t *testing.T, up *fakeUpstream, request string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if slices.Contains(up.requests(), request) {
			return
		}
	}
	t.Fatalf("upstream never saw %s; saw %v", request, up.requests())
}
