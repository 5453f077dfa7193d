package registry

// Checks under a signature policy that find nothing are kept sigFailTTL:
// a client repeating a request that fails them (anonymously, at will)
// must not repeat upstream requests or signature verifications each time.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	ggcr "github.com/google/go-containerregistry/pkg/registry"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/registry/sigpolicy"
	"github.com/caddy-oci/caddy-oci/registry/sigpolicy/sigtest"
)

// A mirrored signature manifest (cosign layer types) whose blobs upstream
// lacks: pulling it again and again asks upstream for each missing blob
// once per sigFailTTL, not on every pull, and another signature manifest
// naming the same blobs asks nothing more meanwhile; layers before the
// last sigMaterialLayers are never asked for nor served. Once the blobs are
// upstream and sigFailTTL has passed, the next pull brings them in and
// they are served.
func TestSignatureManifestMissingBlobsAskedOncePerFailTTL(t *testing.T) {
	s := newSigners(t)
	counter := &countingHandler{h: ggcr.New(ggcr.Logger(nopLogger()), ggcr.WithReferrersSupport(true)), blobs: map[string]int{}}
	up := httptest.NewServer(counter)
	t.Cleanup(up.Close)
	m, err := NewMirror(MirrorConfig{Prefix: "docker.io", Upstreams: []string{up.URL}, Default: true})
	if err != nil {
		t.Fatal(err)
	}
	tr := newTestRegistry(t, func(c *Config) {
		c.Mirrors = []*Mirror{m}
		c.SignaturePolicies = []*sigpolicy.Policy{s.policy(t, "docker.io/myorg/**", false)}
	})
	clock := newTestClock()
	tr.h.sigNow = clock.Now

	// More layers than are read: the first never are, nor served.
	const unread = 4
	var layers []any
	var missing []string
	var contents [][]byte
	for i := range unread + sigMaterialLayers {
		b := []byte(fmt.Sprintf(`{"n":%d}`, i))
		d := sigtest.Of(sigpolicy.MediaTypeCosignPayload, b)
		layers = append(layers, d)
		missing = append(missing, d.Digest)
		contents = append(contents, b)
	}
	sigManifest := func(config []byte) []byte {
		b, _ := json.Marshal(map[string]any{
			"schemaVersion": 2,
			"mediaType":     MediaTypeOCIManifest,
			"config":        sigtest.Of("application/vnd.oci.image.config.v1+json", config),
			"layers":        layers,
		})
		return b
	}
	tag1 := sigpolicy.CosignTag("sha256:" + fmt.Sprintf("%064d", 1))
	tag2 := sigpolicy.CosignTag("sha256:" + fmt.Sprintf("%064d", 2))
	pushArtifact(t, up.URL, "myorg/app", tag1, sigManifest([]byte(`{}`)), []byte(`{}`))
	pushArtifact(t, up.URL, "myorg/app", tag2, sigManifest([]byte(`{"other":1}`)), []byte(`{"other":1}`))
	asked := func() int {
		n := 0
		for _, d := range missing {
			n += counter.count(d)
		}
		return n
	}
	want := sigMaterialLayers // the config is there
	last := len(missing) - 1

	const pulls = 5
	for range pulls {
		tr.wantStatus(tr.do(http.MethodGet, "/v2/docker.io/myorg/app/manifests/"+tag1, nil), http.StatusOK)
	}
	if n := asked(); n != want {
		t.Errorf("%d pulls of one signature manifest made %d upstream blob GETs, want %d (each missing blob read once)", pulls, n, want)
	}
	tr.wantStatus(tr.do(http.MethodGet, "/v2/docker.io/myorg/app/manifests/"+tag2, nil), http.StatusOK)
	if n := asked(); n != want {
		t.Errorf("another signature manifest naming the same missing blobs: %d upstream blob GETs in all, want still %d", n, want)
	}
	wantDenied(t, tr, tr.do(http.MethodGet, "/v2/docker.io/myorg/app/blobs/"+missing[last], nil), "docker.io/myorg/**")

	// The blobs appear upstream; after sigFailTTL a pull finds them.
	for _, b := range contents {
		d := sigtest.Of("", b).Digest
		putTo(t, http.MethodPost, up.URL+"/v2/myorg/app/blobs/uploads/?digest="+d, "application/octet-stream", b, http.StatusCreated)
	}
	tr.wantStatus(tr.do(http.MethodGet, "/v2/docker.io/myorg/app/manifests/"+tag1, nil), http.StatusOK)
	if n := asked(); n != want {
		t.Errorf("within sigFailTTL: %d upstream blob GETs in all, want still %d", n, want)
	}
	clock.Add(sigFailTTL + time.Millisecond)
	tr.wantStatus(tr.do(http.MethodGet, "/v2/docker.io/myorg/app/manifests/"+tag1, nil), http.StatusOK)
	if n := asked(); n != 2*want {
		t.Errorf("after sigFailTTL: %d upstream blob GETs in all, want %d (each missing blob asked again once)", n, 2*want)
	}
	resp := tr.do(http.MethodGet, "/v2/docker.io/myorg/app/blobs/"+missing[last], nil)
	tr.wantStatus(resp, http.StatusOK)
	if string(resp.body) != string(contents[last]) {
		t.Errorf("blob: %q", resp.body)
	}
	for _, d := range missing[:unread] {
		if counter.count(d) != 0 {
			t.Errorf("upstream was asked for %s, a layer no check reads", d)
		}
		wantDenied(t, tr, tr.do(http.MethodGet, "/v2/docker.io/myorg/app/blobs/"+d, nil), "docker.io/myorg/**")
	}
}

// verifyCountingStore counts the verifications of one subject: each reads
// the subject's cosign tag (storeSignatures.Candidates) once.
type verifyCountingStore struct {
	Store
	tag string
	n   atomic.Int64
}

func (s *verifyCountingStore) ResolveTag(ctx context.Context, repo, tag string) (cache.Digest, error) {
	if tag == s.tag {
		s.n.Add(1)
	}
	return s.Store.ResolveTag(ctx, repo, tag)
}

// A blob whose vouch expired is served when a manifest that vouched for it
// passes again. When it no longer does (its signature gone), repeated
// requests for the blob verify that manifest once per sigFailTTL, not on
// each request: for a mirrored name the refusal found from the store
// alone is kept for checks that do not ask upstream either. A manifest
// pull, which asks upstream, is not bound by it, and what it vouches for
// is served at once.
func TestSignatureBlobAfterVouchExpiryVerifiesOncePerFailTTL(t *testing.T) {
	s := newSigners(t)
	up := httptest.NewServer(ggcr.New(ggcr.Logger(nopLogger()), ggcr.WithReferrersSupport(true)))
	t.Cleanup(up.Close)
	m, err := NewMirror(MirrorConfig{Prefix: "docker.io", Upstreams: []string{up.URL}, Default: true})
	if err != nil {
		t.Fatal(err)
	}
	img := pushTestImage(t, up.URL, "myorg/app", "v1", "slow")
	signCosign(t, up.URL, "myorg/app", s.key, img, img.Digest, false)
	var counted *verifyCountingStore
	tr := newTestRegistry(t, func(c *Config) {
		counted = &verifyCountingStore{Store: c.Store, tag: sigpolicy.CosignTag(img.Digest)}
		c.Store = counted
		c.Mirrors = []*Mirror{m}
		c.SignaturePolicies = []*sigpolicy.Policy{s.policy(t, "docker.io/myorg/**", false)}
	})
	clock := newTestClock()
	tr.h.sigNow = clock.Now
	const repo = "docker.io/myorg/app"
	layer := "/v2/" + repo + "/blobs/" + layerOfTestImage("slow")

	tr.wantStatus(tr.do(http.MethodGet, "/v2/"+repo+"/manifests/"+img.Digest, nil), http.StatusOK)
	tr.wantStatus(tr.do(http.MethodGet, layer, nil), http.StatusOK)
	// The signature leaves the store (upstream still has it).
	if err := tr.store.DeleteTag(context.Background(), repo, sigpolicy.CosignTag(img.Digest)); err != nil {
		t.Fatal(err)
	}
	clock.Add(sigVouchTTL + time.Second)

	counted.n.Store(0)
	const gets = 20
	for range gets {
		wantDenied(t, tr, tr.do(http.MethodGet, layer, nil), "docker.io/myorg/**")
	}
	if n := counted.n.Load(); n > 2 {
		t.Errorf("%d GETs of a blob whose voucher fails made %d signature verifications, want at most 2 (the voucher, a scan)", gets, n)
	}
	clock.Add(sigFailTTL + time.Millisecond)
	before := counted.n.Load()
	wantDenied(t, tr, tr.do(http.MethodGet, layer, nil), "docker.io/myorg/**")
	if counted.n.Load() == before {
		t.Error("after sigFailTTL the voucher was not verified again")
	}

	// A manifest pull asks upstream, finds the signature again and
	// vouches: the blob is served at once, the refusals kept or not.
	tr.wantStatus(tr.do(http.MethodGet, "/v2/"+repo+"/manifests/"+img.Digest, nil), http.StatusOK)
	tr.wantStatus(tr.do(http.MethodGet, layer, nil), http.StatusOK)
}

// A refused mirrored pull looks for signatures upstream: of a signature
// manifest listing many layers it fetches only what a check reads (the
// last sigpolicy.MaxLayers), on each refusal (every sigFailTTL at most).
func TestSignaturePullUpstreamLayersBounded(t *testing.T) {
	s := newSigners(t)
	counter := &countingHandler{h: ggcr.New(ggcr.Logger(nopLogger()), ggcr.WithReferrersSupport(true)), blobs: map[string]int{}}
	up := httptest.NewServer(counter)
	t.Cleanup(up.Close)
	m, err := NewMirror(MirrorConfig{Prefix: "docker.io", Upstreams: []string{up.URL}, Default: true})
	if err != nil {
		t.Fatal(err)
	}
	tr := newTestRegistry(t, func(c *Config) {
		c.Mirrors = []*Mirror{m}
		c.SignaturePolicies = []*sigpolicy.Policy{s.policy(t, "docker.io/myorg/**", false)}
	})
	clock := newTestClock()
	tr.h.sigNow = clock.Now
	img := pushTestImage(t, up.URL, "myorg/app", "v1", "unsigned")
	const piled = 100
	var layers []any
	var missing []string
	for i := range piled {
		d := sigtest.Of(sigpolicy.MediaTypeCosignPayload, []byte(fmt.Sprintf(`{"n":%d}`, i)))
		layers = append(layers, map[string]any{"mediaType": d.MediaType, "digest": d.Digest, "size": d.Size,
			"annotations": map[string]string{sigpolicy.AnnotationCosignSignature: "c2ln"}})
		missing = append(missing, d.Digest)
	}
	man, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     MediaTypeOCIManifest,
		"config":        sigtest.Of("application/vnd.oci.image.config.v1+json", []byte(`{}`)),
		"layers":        layers,
	})
	pushArtifact(t, up.URL, "myorg/app", sigpolicy.CosignTag(img.Digest), man, []byte(`{}`))
	asked := func() (n int) {
		for _, d := range missing {
			n += counter.count(d)
		}
		return n
	}

	wantDenied(t, tr, tr.do(http.MethodGet, "/v2/docker.io/myorg/app/manifests/v1", nil), "docker.io/myorg/**")
	if n := asked(); n > sigpolicy.MaxLayers {
		t.Errorf("a refused pull asked upstream for %d of the %d layers of its signature manifest, want at most %d", n, piled, sigpolicy.MaxLayers)
	}
	clock.Add(sigFailTTL + time.Millisecond)
	before := asked()
	wantDenied(t, tr, tr.do(http.MethodGet, "/v2/docker.io/myorg/app/manifests/v1", nil), "docker.io/myorg/**")
	if n := asked() - before; n > sigpolicy.MaxLayers {
		t.Errorf("after sigFailTTL a refused pull asked upstream %d times, want at most %d", n, sigpolicy.MaxLayers)
	}
}

// A blob refused because its voucher's signature went is kept refused
// for sigFailTTL, but not past a push to the repository: a signature
// pushed again counts at once, for blobs as for manifests.
func TestSignatureBlobMissForgottenOnPush(t *testing.T) {
	s := newSigners(t)
	tr, clock := clockedSignedRegistry(t, s)
	base, repo := tr.srv.URL, "team/app"
	img := pushTestImage(t, base, repo, "", "resigned")
	layer := "/v2/" + repo + "/blobs/" + layerOfTestImage("resigned")
	signCosign(t, base, repo, s.key, img, img.Digest, false)
	tr.wantStatus(tr.do(http.MethodGet, "/v2/"+repo+"/manifests/"+img.Digest, nil), http.StatusOK)
	tr.wantStatus(tr.do(http.MethodDelete, "/v2/"+repo+"/manifests/"+sigpolicy.CosignTag(img.Digest), nil), http.StatusAccepted)
	clock.Add(sigVouchTTL + time.Second)
	wantDenied(t, tr, tr.do(http.MethodGet, layer, nil), "team/**")
	signCosign(t, base, repo, s.key, img, img.Digest, false)
	tr.wantStatus(tr.do(http.MethodGet, layer, nil), http.StatusOK)
}

// Upstream piling signature referrers onto an image, each with many
// layers: a refused pull fetches at most sigPullLayers of their layers in
// all, and the cosign tag's signature is fetched first, so that junk
// referrers cannot starve it: the signed image passes.
func TestSignaturePullUpstreamReferrersBounded(t *testing.T) {
	s := newSigners(t)
	counter := &countingHandler{h: ggcr.New(ggcr.Logger(nopLogger()), ggcr.WithReferrersSupport(true)), blobs: map[string]int{}}
	up := httptest.NewServer(counter)
	t.Cleanup(up.Close)
	m, err := NewMirror(MirrorConfig{Prefix: "docker.io", Upstreams: []string{up.URL}, Default: true})
	if err != nil {
		t.Fatal(err)
	}
	tr := newTestRegistry(t, func(c *Config) {
		c.Mirrors = []*Mirror{m}
		c.SignaturePolicies = []*sigpolicy.Policy{s.policy(t, "docker.io/myorg/**", false)}
	})
	clock := newTestClock()
	tr.h.sigNow = clock.Now
	unsigned := pushTestImage(t, up.URL, "myorg/app", "unsigned", "unsigned")
	signed := pushTestImage(t, up.URL, "myorg/app", "signed", "signed")
	var missing []string
	for _, subject := range []sigtest.Descriptor{unsigned, signed} {
		for r := range sigpolicy.MaxCandidates {
			var layers []any
			for i := range sigpolicy.MaxLayers {
				d := sigtest.Of(sigpolicy.MediaTypeCosignPayload, []byte(fmt.Sprintf(`{"s":%q,"r":%d,"n":%d}`, subject.Digest, r, i)))
				layers = append(layers, map[string]any{"mediaType": d.MediaType, "digest": d.Digest, "size": d.Size,
					"annotations": map[string]string{sigpolicy.AnnotationCosignSignature: "c2ln"}})
				missing = append(missing, d.Digest)
			}
			man, _ := json.Marshal(map[string]any{
				"schemaVersion": 2,
				"mediaType":     MediaTypeOCIManifest,
				"artifactType":  sigpolicy.ArtifactTypeCosign,
				"config":        sigtest.Of("application/vnd.oci.image.config.v1+json", []byte(`{}`)),
				"layers":        layers,
				"subject":       subject,
			})
			pushArtifact(t, up.URL, "myorg/app", "", man, []byte(`{}`))
		}
	}
	signCosign(t, up.URL, "myorg/app", s.key, signed, signed.Digest, false)
	asked := func() (n int) {
		for _, d := range missing {
			n += counter.count(d)
		}
		return n
	}

	wantDenied(t, tr, tr.do(http.MethodGet, "/v2/docker.io/myorg/app/manifests/unsigned", nil), "docker.io/myorg/**")
	if n := asked(); n > sigPullLayers {
		t.Errorf("a refused pull asked upstream for %d layers of piled referrers, want at most %d", n, sigPullLayers)
	}
	tr.wantStatus(tr.do(http.MethodGet, "/v2/docker.io/myorg/app/manifests/signed", nil), http.StatusOK)
	tr.wantStatus(tr.do(http.MethodGet, "/v2/docker.io/myorg/app/blobs/"+layerOfTestImage("signed"), nil), http.StatusOK)
}
