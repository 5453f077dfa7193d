package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	ggcr "github.com/google/go-containerregistry/pkg/registry"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/registry/sigpolicy"
	"github.com/caddy-oci/caddy-oci/registry/sigpolicy/sigtest"
)

// smugglingIndex is an unsigned index (or, with mediaType other than an
// index's, a manifest shaped like one) that lists platform manifests and
// also carries a "layers" list naming blob digests: an index lists
// manifests, so what its "layers" name must never become servable.
func smugglingIndex(mediaType string, children []sigtest.Descriptor, layers ...string) []byte {
	ms := []any{}
	for _, c := range children {
		ms = append(ms, map[string]any{"mediaType": c.MediaType, "digest": c.Digest, "size": c.Size,
			"platform": map[string]string{"os": "linux", "architecture": "amd64"}})
	}
	ls := []any{}
	for _, l := range layers {
		ls = append(ls, map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": l, "size": len("layer of ") + 8})
	}
	b, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": mediaType, "manifests": ms, "layers": ls})
	return b
}

// Under per_platform an unsigned index passes (each platform must be
// signed itself). It must not make servable what it names: neither the
// blobs under a "layers" list it carries, nor the layers of an unsigned
// platform manifest it lists. Only a platform manifest that passed
// vouches, and only for its own config and layers.
func TestSignaturePolicyUnsignedIndexVouchesNothing(t *testing.T) {
	s := newSigners(t)
	tr := newTestRegistry(t, func(c *Config) {
		c.SignaturePolicies = []*sigpolicy.Policy{s.policy(t, "team/**", true)}
	})
	base, repo := tr.srv.URL, "team/app"
	signed := pushTestImage(t, base, repo, "", "signed-p")
	signCosign(t, base, repo, s.key, signed, signed.Digest, false)
	unsigned := pushTestImage(t, base, repo, "", "unsigned-p")
	loose := pushTestImage(t, base, repo, "", "loose-bl") // its layer is named by the index's "layers"
	_ = loose

	for _, mt := range []string{MediaTypeOCIIndex, "application/vnd.example.bundle+json"} {
		idx := pushArtifact(t, base, repo, "", smugglingIndex(mt, []sigtest.Descriptor{signed, unsigned}, layerOfTestImage("loose-bl")))
		tr.wantStatus(tr.do(http.MethodGet, "/v2/"+repo+"/manifests/"+idx.Digest, nil), http.StatusOK)
	}
	// An index also passes when a scan of the tags meets it.
	pushArtifact(t, base, repo, "tagged", smugglingIndex(MediaTypeOCIIndex, []sigtest.Descriptor{signed, unsigned}, layerOfTestImage("loose-bl")))
	tr.wantStatus(tr.do(http.MethodGet, "/v2/"+repo+"/manifests/tagged", nil), http.StatusOK)

	blob := func(d string) response { return tr.do(http.MethodGet, "/v2/"+repo+"/blobs/"+d, nil) }
	wantDenied(t, tr, blob(layerOfTestImage("loose-bl")), "team/**")
	wantDenied(t, tr, blob(layerOfTestImage("unsigned-p")), "team/**")
	wantDenied(t, tr, tr.do(http.MethodGet, "/v2/"+repo+"/manifests/"+unsigned.Digest, nil), "team/**")
	wantDenied(t, tr, blob(layerOfTestImage("unsigned-p")), "team/**")
	// The signed platform vouches for its own layer, found by the scan
	// through the tagged index or by its own pull.
	tr.wantStatus(blob(layerOfTestImage("signed-p")), http.StatusOK)
	tr.wantStatus(tr.do(http.MethodGet, "/v2/"+repo+"/manifests/"+signed.Digest, nil), http.StatusOK)
	tr.wantStatus(blob(layerOfTestImage("signed-p")), http.StatusOK)
	wantDenied(t, tr, blob(layerOfTestImage("loose-bl")), "team/**")
	// A mount out of the repository is held to the same.
	resp := tr.do(http.MethodPost, "/v2/other/app/blobs/uploads/?mount="+layerOfTestImage("loose-bl")+"&from="+repo, nil)
	tr.wantStatus(resp, http.StatusAccepted)
}

// The same through a mirror: an unsigned index upstream must not make the
// mirror fetch (and serve) a blob its "layers" name.
func TestSignaturePolicyUnsignedIndexVouchesNothingMirror(t *testing.T) {
	s := newSigners(t)
	counter := &countingHandler{h: ggcr.New(ggcr.Logger(nopLogger()), ggcr.WithReferrersSupport(true)), blobs: map[string]int{}}
	up := httptest.NewServer(counter)
	t.Cleanup(up.Close)
	m, err := NewMirror(MirrorConfig{Prefix: "docker.io", Upstreams: []string{up.URL}})
	if err != nil {
		t.Fatal(err)
	}
	tr := newTestRegistry(t, func(c *Config) {
		c.Mirrors = []*Mirror{m}
		c.SignaturePolicies = []*sigpolicy.Policy{s.policy(t, "docker.io/myorg/**", true)}
	})
	signed := pushTestImage(t, up.URL, "myorg/app", "", "signed-p")
	signCosign(t, up.URL, "myorg/app", s.key, signed, signed.Digest, false)
	pushTestImage(t, up.URL, "myorg/app", "", "loose-bl")
	pushArtifact(t, up.URL, "myorg/app", "v1", smugglingIndex(MediaTypeOCIIndex, []sigtest.Descriptor{signed}, layerOfTestImage("loose-bl")))

	tr.wantStatus(tr.do(http.MethodGet, "/v2/docker.io/myorg/app/manifests/v1", nil), http.StatusOK)
	wantDenied(t, tr, tr.do(http.MethodGet, "/v2/docker.io/myorg/app/blobs/"+layerOfTestImage("loose-bl"), nil), "docker.io/myorg/**")
	if n := counter.count(layerOfTestImage("loose-bl")); n != 0 {
		t.Errorf("upstream was asked %d times for a blob only an unsigned index named", n)
	}
	tr.wantStatus(tr.do(http.MethodGet, "/v2/docker.io/myorg/app/manifests/"+signed.Digest, nil), http.StatusOK)
	tr.wantStatus(tr.do(http.MethodGet, "/v2/docker.io/myorg/app/blobs/"+layerOfTestImage("signed-p"), nil), http.StatusOK)
}

// A sync verifies a tag's signed index, then fetches its platform
// manifests one by one, each with its blobs: however long that takes,
// the platforms of the index it verified pass by that index's signature
// (cosign signs the index only). Nothing in it may depend on a verdict
// cached for a while.
func TestSyncSignedIndexChildrenAfterVerdictExpiry(t *testing.T) {
	s := newSigners(t)
	up := httptest.NewServer(ggcr.New(ggcr.Logger(nopLogger()), ggcr.WithReferrersSupport(true)))
	t.Cleanup(up.Close)
	m, err := NewMirror(MirrorConfig{Prefix: "docker.io", Upstreams: []string{up.URL}})
	if err != nil {
		t.Fatal(err)
	}
	tr := newTestRegistry(t, func(c *Config) {
		c.Mirrors = []*Mirror{m}
		c.SignaturePolicies = []*sigpolicy.Policy{s.policy(t, "docker.io/myorg/**", false)}
	})
	clock := newTestClock()
	tr.h.sigNow = clock.Now
	a := pushTestImage(t, up.URL, "myorg/app", "", "a")
	b := pushTestImage(t, up.URL, "myorg/app", "", "b")
	idx := pushTestIndex(t, up.URL, "myorg/app", "v1", a, b)
	signCosign(t, up.URL, "myorg/app", s.key, idx, idx.Digest, false)

	src := tr.h.SyncSource(m)
	ctx := t.Context()
	man, _, err := src.Tag(ctx, "myorg/app", "v1")
	if err != nil {
		t.Fatal(err)
	}
	if man.Digest.String() != idx.Digest {
		t.Fatalf("tag is %s, want %s", man.Digest, idx.Digest)
	}
	for _, c := range []sigtest.Descriptor{a, b} {
		clock.Add(sigPassTTL + sigVouchTTL) // a slow platform before this one
		cd, _ := parseDigestForTest(c.Digest)
		if _, _, err := src.Manifest(ctx, "myorg/app", man, cd); err != nil {
			t.Fatalf("platform %s of the signed index: %v", c.Digest, err)
		}
	}

	// The pass rides only on what the signed index lists, and only on a
	// parent this source verified: not on a SyncManifest made by hand,
	// not on an unsigned index that per_platform lets through.
	u := pushTestImage(t, up.URL, "myorg/app", "", "u")
	ud, _ := parseDigestForTest(u.Digest)
	if _, _, err := src.Manifest(ctx, "myorg/app", man, ud); !errors.Is(err, ErrSignaturePolicy) {
		t.Errorf("a manifest the signed index does not list: %v, want refused", err)
	}
	forged := SyncManifest{MediaType: man.MediaType, Digest: man.Digest, Body: pushedIndexBody(u)}
	if _, _, err := src.Manifest(ctx, "myorg/app", forged, ud); !errors.Is(err, ErrSignaturePolicy) {
		t.Errorf("a parent not verified here: %v, want refused", err)
	}
	if _, err := tr.store.StatManifest(ctx, "docker.io/myorg/app", ud); err == nil {
		t.Error("the refused manifest was stored")
	}
}

// Under per_platform an unsigned index passes a sync, and its platforms
// must each be signed: the index's pass carries to none of them.
func TestSyncUnsignedIndexCoversNothing(t *testing.T) {
	s := newSigners(t)
	up := httptest.NewServer(ggcr.New(ggcr.Logger(nopLogger()), ggcr.WithReferrersSupport(true)))
	t.Cleanup(up.Close)
	m, err := NewMirror(MirrorConfig{Prefix: "docker.io", Upstreams: []string{up.URL}})
	if err != nil {
		t.Fatal(err)
	}
	tr := newTestRegistry(t, func(c *Config) {
		c.Mirrors = []*Mirror{m}
		c.SignaturePolicies = []*sigpolicy.Policy{s.policy(t, "docker.io/myorg/**", true)}
	})
	a := pushTestImage(t, up.URL, "myorg/app", "", "a")
	b := pushTestImage(t, up.URL, "myorg/app", "", "b")
	signCosign(t, up.URL, "myorg/app", s.key, a, a.Digest, false)
	pushTestIndex(t, up.URL, "myorg/app", "v1", a, b)
	src := tr.h.SyncSource(m)
	ctx := t.Context()
	man, _, err := src.Tag(ctx, "myorg/app", "v1")
	if err != nil {
		t.Fatal(err)
	}
	ad, _ := parseDigestForTest(a.Digest)
	bd, _ := parseDigestForTest(b.Digest)
	if _, _, err := src.Manifest(ctx, "myorg/app", man, ad); err != nil {
		t.Errorf("signed platform: %v", err)
	}
	if _, _, err := src.Manifest(ctx, "myorg/app", man, bd); !errors.Is(err, ErrSignaturePolicy) {
		t.Errorf("unsigned platform of an unsigned index: %v, want refused", err)
	}
}

// pushedIndexBody is the body pushTestIndex would push for children.
func pushedIndexBody(children ...sigtest.Descriptor) []byte {
	ms := []any{}
	for _, c := range children {
		ms = append(ms, map[string]any{"mediaType": c.MediaType, "digest": c.Digest, "size": c.Size})
	}
	b, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": MediaTypeOCIIndex, "manifests": ms})
	return b
}

func parseDigestForTest(s string) (cache.Digest, error) { return cache.ParseDigest(s) }

// A signature manifest is served unsigned (clients read it to verify),
// and its blobs with it. What makes a manifest one is the media types its
// descriptors claim, which anyone who pushes (or an upstream) writes: a
// "signature" whose layer is an unsigned image's layer tar, or whose
// config is a large blob, must not make those servable. Only small blobs
// that are what a signature's are (JSON, a COSE envelope) are served.
func TestSignaturePolicyFakeSignatureVouchesNothing(t *testing.T) {
	s := newSigners(t)
	tr := newTestRegistry(t, func(c *Config) {
		c.SignaturePolicies = []*sigpolicy.Policy{s.policy(t, "team/**", false)}
	})
	base, repo := tr.srv.URL, "team/app"
	signed := pushTestImage(t, base, repo, "signed", "signed")
	signCosign(t, base, repo, s.key, signed, signed.Digest, false)
	tarLayer := []byte("ustar-looking layer bytes\x00\x00\x00 of an unsigned image")
	bigJSON := []byte(`{"pad":"` + strings.Repeat("x", sigpolicy.MaxBlobSize) + `"}`)
	forms := []struct {
		mediaType string
		blob      []byte
	}{
		{sigpolicy.MediaTypeCosignPayload, tarLayer},
		{sigpolicy.MediaTypeJWS, tarLayer},
		{sigpolicy.MediaTypeCOSE, tarLayer},
		{sigpolicy.MediaTypeCOSE, append([]byte{0xd2, 0x84}, tarLayer...)}, // CBOR's first bytes, then a tar
		{"application/vnd.dsse.envelope.v1+json", tarLayer},
		{sigpolicy.MediaTypeCosignPayload, bigJSON},
	}
	for i, f := range forms {
		cfg := []byte(fmt.Sprintf("config tar %d", i))
		fake, _ := json.Marshal(map[string]any{
			"schemaVersion": 2, "mediaType": MediaTypeOCIManifest,
			"config": sigtest.Of("application/vnd.oci.image.config.v1+json", cfg),
			"layers": []any{sigtest.Of(f.mediaType, f.blob)},
		})
		// Under cosign's tag of the signed image, so that a scan meets
		// it too; then pulled by digest.
		d := pushArtifact(t, base, repo, sigpolicy.CosignTag(signed.Digest), fake, cfg, f.blob)
		tr.wantStatus(tr.do(http.MethodGet, "/v2/"+repo+"/manifests/"+d.Digest, nil), http.StatusOK)
		wantDenied(t, tr, tr.do(http.MethodGet, "/v2/"+repo+"/blobs/"+sigtest.Of("", f.blob).Digest, nil), "team/**")
		wantDenied(t, tr, tr.do(http.MethodGet, "/v2/"+repo+"/blobs/"+sigtest.Of("", cfg).Digest, nil), "team/**")
	}
	// A real signature's blobs are still served.
	signCosign(t, base, repo, s.key, signed, signed.Digest, false)
	sigm := tr.do(http.MethodGet, "/v2/"+repo+"/manifests/"+sigpolicy.CosignTag(signed.Digest), nil)
	tr.wantStatus(sigm, http.StatusOK)
	var doc manifestDoc
	if err := json.Unmarshal(sigm.body, &doc); err != nil || len(doc.Layers) != 1 {
		t.Fatalf("signature manifest: %v %s", err, sigm.body)
	}
	tr.wantStatus(tr.do(http.MethodGet, "/v2/"+repo+"/blobs/"+doc.Layers[0].Digest, nil), http.StatusOK)
	tr.wantStatus(tr.do(http.MethodGet, "/v2/"+repo+"/blobs/"+doc.Config.Digest, nil), http.StatusOK)
	// A notation signature's envelope and config too.
	signNotation(t, base, repo, s.notary, signed, sigpolicy.MediaTypeCOSE)
	signNotation(t, base, repo, s.notary, signed, sigpolicy.MediaTypeJWS)
	refs := tr.do(http.MethodGet, "/v2/"+repo+"/referrers/"+signed.Digest, nil)
	var idx manifestDoc
	if err := json.Unmarshal(refs.body, &idx); err != nil || len(idx.Manifests) < 2 {
		t.Fatalf("referrers: %v %s", err, refs.body)
	}
	for _, r := range idx.Manifests {
		resp := tr.do(http.MethodGet, "/v2/"+repo+"/manifests/"+r.Digest, nil)
		tr.wantStatus(resp, http.StatusOK)
		var sd manifestDoc
		if err := json.Unmarshal(resp.body, &sd); err != nil {
			t.Fatal(err)
		}
		for _, b := range append(sd.Layers, *sd.Config) {
			tr.wantStatus(tr.do(http.MethodGet, "/v2/"+repo+"/blobs/"+b.Digest, nil), http.StatusOK)
		}
	}
}

// A platform manifest of a signed index passes on the index's signature
// however long after the index was pulled (a client copying every
// platform, each with its blobs, asks for the last ones late), even when
// the index was pulled by digest and no tag names it; and it stops
// passing when the index's signature goes.
func TestSignaturePolicyPlatformLongAfterSignedIndex(t *testing.T) {
	s := newSigners(t)
	tr, clock := clockedSignedRegistry(t, s)
	base, repo := tr.srv.URL, "team/app"
	a := pushTestImage(t, base, repo, "", "a")
	b := pushTestImage(t, base, repo, "", "b")
	c := pushTestImage(t, base, repo, "", "c")
	idx := pushTestIndex(t, base, repo, "", a, b, c)
	signCosign(t, base, repo, s.key, idx, idx.Digest, false)

	tr.wantStatus(tr.do(http.MethodGet, "/v2/"+repo+"/manifests/"+idx.Digest, nil), http.StatusOK)
	for _, p := range []sigtest.Descriptor{a, b} {
		clock.Add(sigPassTTL + time.Second)
		tr.wantStatus(tr.do(http.MethodGet, "/v2/"+repo+"/manifests/"+p.Digest, nil), http.StatusOK)
		tr.wantStatus(tr.do(http.MethodGet, "/v2/"+repo+"/blobs/"+layerOfTestImage(map[string]string{a.Digest: "a", b.Digest: "b"}[p.Digest]), nil), http.StatusOK)
	}
	tr.wantStatus(tr.do(http.MethodDelete, "/v2/"+repo+"/manifests/"+sigpolicy.CosignTag(idx.Digest), nil), http.StatusAccepted)
	clock.Add(sigPassTTL + time.Second)
	wantDenied(t, tr, tr.do(http.MethodGet, "/v2/"+repo+"/manifests/"+c.Digest, nil), "team/**")
}

// A pull slower than a vouch (sigVouchTTL) still gets its last layers:
// the manifest that vouched for them is verified again, here for an
// image pulled by digest, which no tag scan finds. Once its signature is
// gone, its layers are refused.
func TestSignaturePolicyLayersAfterVouchExpiry(t *testing.T) {
	s := newSigners(t)
	tr, clock := clockedSignedRegistry(t, s)
	base, repo := tr.srv.URL, "team/app"
	img := pushTestImage(t, base, repo, "", "slow")
	signCosign(t, base, repo, s.key, img, img.Digest, true)
	tr.wantStatus(tr.do(http.MethodGet, "/v2/"+repo+"/manifests/"+img.Digest, nil), http.StatusOK)
	clock.Add(sigVouchTTL + time.Second)
	tr.wantStatus(tr.do(http.MethodGet, "/v2/"+repo+"/blobs/"+layerOfTestImage("slow"), nil), http.StatusOK)

	refs := tr.do(http.MethodGet, "/v2/"+repo+"/referrers/"+img.Digest, nil)
	var idx manifestDoc
	if err := json.Unmarshal(refs.body, &idx); err != nil || len(idx.Manifests) != 1 {
		t.Fatalf("referrers: %v %s", err, refs.body)
	}
	tr.wantStatus(tr.do(http.MethodDelete, "/v2/"+repo+"/manifests/"+idx.Manifests[0].Digest, nil), http.StatusAccepted)
	clock.Add(sigVouchTTL + time.Second)
	wantDenied(t, tr, tr.do(http.MethodGet, "/v2/"+repo+"/blobs/"+layerOfTestImage("slow"), nil), "team/**")
}

// gatedHandler holds the upstream's answers for one path until released,
// and reports each request for it.
type gatedHandler struct {
	h       http.Handler
	path    string
	seen    chan struct{}
	release chan struct{}
}

func (g *gatedHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == g.path {
		g.seen <- struct{}{}
		<-g.release
	}
	g.h.ServeHTTP(w, r)
}

// A sync's manifest fetch under a policy does not share a pull's fetch of
// the same digest in flight: the pull stores what upstream sent and checks
// it when it serves, so what it returns was never verified, and a sync
// taking it would fetch the blobs of an unsigned image.
func TestSyncManifestDoesNotJoinAPull(t *testing.T) {
	s := newSigners(t)
	g := &gatedHandler{h: ggcr.New(ggcr.Logger(nopLogger()), ggcr.WithReferrersSupport(true)), seen: make(chan struct{}, 8), release: make(chan struct{})}
	up := httptest.NewServer(g)
	t.Cleanup(up.Close)
	m, err := NewMirror(MirrorConfig{Prefix: "docker.io", Upstreams: []string{up.URL}})
	if err != nil {
		t.Fatal(err)
	}
	tr := newTestRegistry(t, func(c *Config) {
		c.Mirrors = []*Mirror{m}
		c.SignaturePolicies = []*sigpolicy.Policy{s.policy(t, "docker.io/myorg/**", false)}
	})
	u := pushTestImage(t, up.URL, "myorg/app", "", "u")
	g.path = "/v2/myorg/app/manifests/" + u.Digest
	ud, _ := parseDigestForTest(u.Digest)

	pulled := make(chan response, 1)
	go func() { pulled <- tr.do(http.MethodGet, "/v2/docker.io/myorg/app/manifests/"+u.Digest, nil) }()
	<-g.seen // the pull's fetch is in flight
	synced := make(chan error, 1)
	go func() {
		_, _, err := tr.h.SyncSource(m).Manifest(context.Background(), "myorg/app", SyncManifest{}, ud)
		synced <- err
	}()
	select {
	case <-g.seen: // the sync asked upstream itself
	case err := <-synced:
		t.Errorf("sync returned before its own fetch: %v", err)
	case <-time.After(10 * time.Second):
		t.Error("the sync did not ask upstream itself (it joined the pull's fetch)")
	}
	close(g.release)
	wantDenied(t, tr, <-pulled, "docker.io/myorg/**")
	if err := <-synced; !errors.Is(err, ErrSignaturePolicy) {
		t.Errorf("sync of an unsigned manifest while a pull fetched it: %v, want refused", err)
	}
}

// An index nested in a signed index passes on its signature, and so do
// the manifests the nested one lists (cosign signs the top index only),
// as a sync (which carries the pass down) stores them.
func TestSignaturePolicyNestedIndexOfSignedIndex(t *testing.T) {
	s := newSigners(t)
	tr := newTestRegistry(t, func(c *Config) {
		c.SignaturePolicies = []*sigpolicy.Policy{s.policy(t, "team/**", false)}
	})
	base, repo := tr.srv.URL, "team/app"
	a := pushTestImage(t, base, repo, "", "a")
	inner := pushTestIndex(t, base, repo, "", a)
	top := pushTestIndex(t, base, repo, "v1", inner)
	signCosign(t, base, repo, s.key, top, top.Digest, false)
	for _, ref := range []string{"v1", inner.Digest, a.Digest} {
		tr.wantStatus(tr.do(http.MethodGet, "/v2/"+repo+"/manifests/"+ref, nil), http.StatusOK)
	}
	tr.wantStatus(tr.do(http.MethodGet, "/v2/"+repo+"/blobs/"+layerOfTestImage("a"), nil), http.StatusOK)
}
