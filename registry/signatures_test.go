package registry

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	ggcr "github.com/google/go-containerregistry/pkg/registry"

	"github.com/caddy-oci/caddy-oci/registry/sigpolicy"
	"github.com/caddy-oci/caddy-oci/registry/sigpolicy/sigtest"
)

// putTo sends one request to a registry at base and fails unless it
// answers want.
func putTo(t *testing.T, method, url, ct string, body []byte, want int) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != want {
		t.Fatalf("%s %s: %d, want %d", method, url, resp.StatusCode, want)
	}
}

// pushArtifact pushes blobs, then manifest under ref, into repo of the
// registry at base, and returns the manifest's descriptor.
func pushArtifact(t *testing.T, base, repo, ref string, manifest []byte, blobs ...[]byte) sigtest.Descriptor {
	t.Helper()
	for _, b := range blobs {
		d := sigtest.Of("", b).Digest
		putTo(t, http.MethodPost, base+"/v2/"+repo+"/blobs/uploads/?digest="+d, "application/octet-stream", b, http.StatusCreated)
	}
	var doc struct {
		MediaType string `json:"mediaType"`
	}
	if err := json.Unmarshal(manifest, &doc); err != nil {
		t.Fatal(err)
	}
	desc := sigtest.Of(doc.MediaType, manifest)
	if ref == "" {
		ref = desc.Digest
	}
	putTo(t, http.MethodPut, base+"/v2/"+repo+"/manifests/"+ref, doc.MediaType, manifest, http.StatusCreated)
	return desc
}

// pushTestImage pushes a small distinct image (seed makes its layer) as
// repo:tag.
func pushTestImage(t *testing.T, base, repo, tag, seed string) sigtest.Descriptor {
	t.Helper()
	cfg := []byte(`{"architecture":"amd64","os":"linux","seed":"` + seed + `"}`)
	layer := []byte("layer of " + seed)
	m, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     MediaTypeOCIManifest,
		"config":        sigtest.Of("application/vnd.oci.image.config.v1+json", cfg),
		"layers":        []any{sigtest.Of("application/vnd.oci.image.layer.v1.tar", layer)},
	})
	return pushArtifact(t, base, repo, tag, m, cfg, layer)
}

// signCosign pushes a cosign signature of subject by key: under cosign's
// tag, or as a referrer. payloadDigest is the digest the payload names
// (subject's own, unless a test lies).
func signCosign(t *testing.T, base, repo string, key *sigtest.CosignKey, subject sigtest.Descriptor, payloadDigest string, referrer bool) {
	t.Helper()
	payload := sigtest.CosignPayload(repo, payloadDigest)
	sig, err := key.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	if referrer {
		m, blobs := sigtest.CosignManifest(payload, sig, &subject)
		pushArtifact(t, base, repo, "", m, blobs...)
		return
	}
	m, blobs := sigtest.CosignManifest(payload, sig, nil)
	pushArtifact(t, base, repo, sigpolicy.CosignTag(subject.Digest), m, blobs...)
}

func signNotation(t *testing.T, base, repo string, s *sigtest.NotationSigner, subject sigtest.Descriptor, envType string) {
	t.Helper()
	env, err := s.Sign(t.Context(), subject, envType)
	if err != nil {
		t.Fatal(err)
	}
	m, blobs := sigtest.NotationManifest(env, envType, subject)
	pushArtifact(t, base, repo, "", m, blobs...)
}

// signers are the keys and certificates of one test, written to files as
// an operator would configure them.
type signers struct {
	key, otherKey       *sigtest.CosignKey
	notary, otherNotary *sigtest.NotationSigner
	keyFile, certFile   string
}

// clockedSignedRegistry is a test registry whose policy wants team/**
// signed by s, and whose signature checks read the returned clock.
func clockedSignedRegistry(t *testing.T, s *signers) (*testRegistry, *testClock) {
	t.Helper()
	tr := newTestRegistry(t, func(c *Config) {
		c.SignaturePolicies = []*sigpolicy.Policy{s.policy(t, "team/**", false)}
	})
	clock := newTestClock()
	tr.h.sigNow = clock.Now
	return tr, clock
}

func newSigners(t *testing.T) *signers {
	t.Helper()
	s := &signers{}
	var err error
	for _, k := range []**sigtest.CosignKey{&s.key, &s.otherKey} {
		if *k, err = sigtest.NewCosignKey(); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []**sigtest.NotationSigner{&s.notary, &s.otherNotary} {
		if *n, err = sigtest.NewNotationSigner(); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	s.keyFile, s.certFile = filepath.Join(dir, "cosign.pub"), filepath.Join(dir, "notation.pem")
	if err := os.WriteFile(s.keyFile, s.key.PublicPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.certFile, s.notary.RootPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *signers) policy(t *testing.T, match string, perPlatform bool) *sigpolicy.Policy {
	t.Helper()
	p, err := sigpolicy.New(sigpolicy.Config{Match: match, CosignKeys: []string{s.keyFile}, NotationCerts: []string{s.certFile}, PerPlatform: perPlatform})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// wantDenied checks a refusal by a signature policy: 403 DENIED naming
// the policy, and nothing of the manifest.
func wantDenied(t *testing.T, tr *testRegistry, resp response, policy string) {
	t.Helper()
	tr.wantError(resp, http.StatusForbidden, CodeDenied)
	if resp.Request.Method == http.MethodGet && !strings.Contains(string(resp.body), "signature policy "+policy) {
		t.Errorf("%s: refusal does not name policy %s: %s", resp.Request.URL, policy, resp.body)
	}
	if resp.Header.Get("Docker-Content-Digest") != "" {
		t.Errorf("%s: a refusal carries the digest", resp.Request.URL)
	}
}

func TestSignaturePolicyLocal(t *testing.T) {
	s := newSigners(t)
	tr := newTestRegistry(t, func(c *Config) {
		c.SignaturePolicies = []*sigpolicy.Policy{s.policy(t, "team/**", false)}
	})
	base, repo := tr.srv.URL, "team/app"

	signed := pushTestImage(t, base, repo, "signed", "signed")
	signCosign(t, base, repo, s.key, signed, signed.Digest, false)
	referrer := pushTestImage(t, base, repo, "referrer", "referrer")
	signCosign(t, base, repo, s.key, referrer, referrer.Digest, true)
	jws := pushTestImage(t, base, repo, "jws", "jws")
	signNotation(t, base, repo, s.notary, jws, sigpolicy.MediaTypeJWS)
	cose := pushTestImage(t, base, repo, "cose", "cose")
	signNotation(t, base, repo, s.notary, cose, sigpolicy.MediaTypeCOSE)

	pushTestImage(t, base, repo, "unsigned", "unsigned")
	otherKey := pushTestImage(t, base, repo, "otherkey", "otherkey")
	signCosign(t, base, repo, s.otherKey, otherKey, otherKey.Digest, false)
	otherCA := pushTestImage(t, base, repo, "otherca", "otherca")
	signNotation(t, base, repo, s.otherNotary, otherCA, sigpolicy.MediaTypeJWS)
	// A valid signature by the right key, of another image, stored where
	// this image's signature would be.
	stolen := pushTestImage(t, base, repo, "stolen", "stolen")
	signCosign(t, base, repo, s.key, stolen, signed.Digest, false)
	// A signature whose bytes were changed after signing.
	tampered := pushTestImage(t, base, repo, "tampered", "tampered")
	payload := sigtest.CosignPayload(repo, tampered.Digest)
	sig, err := s.key.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	raw := []byte(sig)
	raw[10] ^= 'A' ^ 'B' // still base64, another signature
	if raw[10] == sig[10] {
		raw[10] = 'C'
	}
	m, blobs := sigtest.CosignManifest(payload, string(raw), nil)
	pushArtifact(t, base, repo, sigpolicy.CosignTag(tampered.Digest), m, blobs...)
	// A payload changed after signing.
	tamperedPayload := pushTestImage(t, base, repo, "tampered-payload", "tampered-payload")
	payload = sigtest.CosignPayload(repo, tamperedPayload.Digest)
	if sig, err = s.key.Sign(payload); err != nil {
		t.Fatal(err)
	}
	m, blobs = sigtest.CosignManifest(append(payload, ' '), sig, nil)
	pushArtifact(t, base, repo, sigpolicy.CosignTag(tamperedPayload.Digest), m, blobs...)

	cases := []struct {
		tag    string
		digest string
		pass   bool
	}{
		{"signed", signed.Digest, true},
		{"referrer", referrer.Digest, true},
		{"jws", jws.Digest, true},
		{"cose", cose.Digest, true},
		{"unsigned", "", false},
		{"otherkey", otherKey.Digest, false},
		{"otherca", otherCA.Digest, false},
		{"stolen", stolen.Digest, false},
		{"tampered", tampered.Digest, false},
		{"tampered-payload", tamperedPayload.Digest, false},
	}
	for _, c := range cases {
		refs := []string{c.tag}
		if c.digest != "" {
			refs = append(refs, c.digest)
		}
		for _, ref := range refs {
			for _, method := range []string{http.MethodGet, http.MethodHead} {
				resp := tr.do(method, "/v2/"+repo+"/manifests/"+ref, nil)
				if c.pass {
					tr.wantStatus(resp, http.StatusOK)
				} else {
					wantDenied(t, tr, resp, "team/**")
				}
			}
		}
	}

	// The signature manifests themselves are what a client reads to
	// verify: they are served.
	tr.wantStatus(tr.do(http.MethodGet, "/v2/"+repo+"/manifests/"+sigpolicy.CosignTag(signed.Digest), nil), http.StatusOK)
	// Outside the policy nothing is asked.
	pushTestImage(t, base, "other/app", "unsigned", "unsigned")
	tr.wantStatus(tr.do(http.MethodGet, "/v2/other/app/manifests/unsigned", nil), http.StatusOK)
	// The refusal names the policy, never the key.
	resp := tr.do(http.MethodGet, "/v2/"+repo+"/manifests/unsigned", nil)
	if strings.Contains(string(resp.body), s.keyFile) || strings.Contains(string(resp.body), "BEGIN") {
		t.Errorf("refusal names a key: %s", resp.body)
	}
}

// pushTestIndex pushes an index of children as repo:tag.
func pushTestIndex(t *testing.T, base, repo, tag string, children ...sigtest.Descriptor) sigtest.Descriptor {
	t.Helper()
	ms := []any{}
	for i, c := range children {
		ms = append(ms, map[string]any{"mediaType": c.MediaType, "digest": c.Digest, "size": c.Size,
			"platform": map[string]string{"os": "linux", "architecture": []string{"amd64", "arm64"}[i%2]}})
	}
	b, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": MediaTypeOCIIndex, "manifests": ms})
	return pushArtifact(t, base, repo, tag, b)
}

func TestSignaturePolicyIndex(t *testing.T) {
	s := newSigners(t)
	tr := newTestRegistry(t, func(c *Config) {
		c.SignaturePolicies = []*sigpolicy.Policy{s.policy(t, "team/whole", false), s.policy(t, "team/platforms", true)}
	})
	base := tr.srv.URL

	// Cosign's default: the index is signed, its platforms are not.
	a := pushTestImage(t, base, "team/whole", "", "a")
	b := pushTestImage(t, base, "team/whole", "", "b")
	idx := pushTestIndex(t, base, "team/whole", "signed", a, b)
	signCosign(t, base, "team/whole", s.key, idx, idx.Digest, false)
	c := pushTestImage(t, base, "team/whole", "", "c")
	pushTestIndex(t, base, "team/whole", "unsigned", c)

	tr.wantStatus(tr.do(http.MethodGet, "/v2/team/whole/manifests/signed", nil), http.StatusOK)
	tr.wantStatus(tr.do(http.MethodGet, "/v2/team/whole/manifests/"+a.Digest, nil), http.StatusOK)
	tr.wantStatus(tr.do(http.MethodHead, "/v2/team/whole/manifests/"+b.Digest, nil), http.StatusOK)
	wantDenied(t, tr, tr.do(http.MethodGet, "/v2/team/whole/manifests/unsigned", nil), "team/whole")
	wantDenied(t, tr, tr.do(http.MethodGet, "/v2/team/whole/manifests/"+c.Digest, nil), "team/whole")

	// per_platform: the index need not be signed; each platform pulled must.
	p1 := pushTestImage(t, base, "team/platforms", "", "p1")
	p2 := pushTestImage(t, base, "team/platforms", "", "p2")
	signCosign(t, base, "team/platforms", s.key, p1, p1.Digest, false)
	pushTestIndex(t, base, "team/platforms", "v1", p1, p2)
	tr.wantStatus(tr.do(http.MethodGet, "/v2/team/platforms/manifests/v1", nil), http.StatusOK)
	tr.wantStatus(tr.do(http.MethodGet, "/v2/team/platforms/manifests/"+p1.Digest, nil), http.StatusOK)
	wantDenied(t, tr, tr.do(http.MethodGet, "/v2/team/platforms/manifests/"+p2.Digest, nil), "team/platforms")
}

func TestSignaturePolicyMirror(t *testing.T) {
	s := newSigners(t)
	up := httptest.NewServer(ggcr.New(ggcr.Logger(nopLogger()), ggcr.WithReferrersSupport(true)))
	t.Cleanup(up.Close)
	m, err := NewMirror(MirrorConfig{Prefix: "docker.io", Upstreams: []string{up.URL}, Default: true, Hosts: []string{"docker.mirror.test"}})
	if err != nil {
		t.Fatal(err)
	}
	tr := newTestRegistry(t, func(c *Config) {
		c.Mirrors = []*Mirror{m}
		c.LocalPrefixes = []string{"team"}
		c.SignaturePolicies = []*sigpolicy.Policy{s.policy(t, "docker.io/myorg/**", false)}
	})

	// Signatures present only upstream: cosign's tag form, and notation
	// as a referrer (found through upstream's referrers API).
	signed := pushTestImage(t, up.URL, "myorg/app", "signed", "signed")
	signCosign(t, up.URL, "myorg/app", s.key, signed, signed.Digest, false)
	notary := pushTestImage(t, up.URL, "myorg/app", "notary", "notary")
	signNotation(t, up.URL, "myorg/app", s.notary, notary, sigpolicy.MediaTypeJWS)
	cosignRef := pushTestImage(t, up.URL, "myorg/app", "cosign-ref", "cosign-ref")
	signCosign(t, up.URL, "myorg/app", s.key, cosignRef, cosignRef.Digest, true)
	unsigned := pushTestImage(t, up.URL, "myorg/app", "unsigned", "unsigned")
	otherKey := pushTestImage(t, up.URL, "myorg/app", "otherkey", "otherkey")
	signCosign(t, up.URL, "myorg/app", s.otherKey, otherKey, otherKey.Digest, false)

	// Every name form of docker.io/myorg/app.
	forms := []struct{ path, host string }{
		{path: "/v2/docker.io/myorg/app/manifests/%s"},
		{path: "/docker.io/v2/myorg/app/manifests/%s"},
		{path: "/v2/myorg/app/manifests/%s?ns=docker.io"},
		{path: "/v2/myorg/app/manifests/%s?ns=registry-1.docker.io"},
		{path: "/registry-1.docker.io/v2/myorg/app/manifests/%s"},
		{path: "/v2/myorg/app/manifests/%s"},
		{path: "/v2/myorg/app/manifests/%s", host: "docker.mirror.test"},
	}
	for _, f := range forms {
		for _, c := range []struct {
			ref  string
			pass bool
		}{
			{"signed", true}, {signed.Digest, true}, {"notary", true}, {notary.Digest, true},
			{"cosign-ref", true}, {"unsigned", false}, {unsigned.Digest, false}, {"otherkey", false},
		} {
			var hdr []string
			if f.host != "" {
				hdr = []string{"Host", f.host}
			}
			for _, method := range []string{http.MethodHead, http.MethodGet} {
				resp := tr.do(method, sprintfPath(f.path, c.ref), nil, hdr...)
				if c.pass {
					tr.wantStatus(resp, http.StatusOK)
				} else {
					wantDenied(t, tr, resp, "docker.io/myorg/**")
				}
			}
		}
	}
	// The signatures were cached: upstream's copy going away changes
	// nothing for a verdict already made, nor for a new one on what the
	// store holds.
	up.Close()
	clear(tr.h.sigVerdicts.m) // verify anew
	tr.wantStatus(tr.do(http.MethodGet, "/v2/docker.io/myorg/app/manifests/"+signed.Digest, nil), http.StatusOK)
	tr.wantStatus(tr.do(http.MethodGet, "/v2/docker.io/myorg/app/manifests/"+notary.Digest, nil), http.StatusOK)
}

// A verdict is kept briefly: a refusal 2 seconds (a signature pushed
// after it counts right after), a pass a minute.
func TestSignatureVerdictTTL(t *testing.T) {
	s := newSigners(t)
	tr, clock := clockedSignedRegistry(t, s)
	base := tr.srv.URL
	img := pushTestImage(t, base, "team/app", "v1", "v1")
	wantDenied(t, tr, tr.do(http.MethodGet, "/v2/team/app/manifests/v1", nil), "team/**")

	signCosign(t, base, "team/app", s.key, img, img.Digest, false)
	clock.Add(sigFailTTL + time.Millisecond)
	tr.wantStatus(tr.do(http.MethodGet, "/v2/team/app/manifests/v1", nil), http.StatusOK)

	// The signature goes: the pass holds for its minute, then not.
	tr.wantStatus(tr.do(http.MethodDelete, "/v2/team/app/manifests/"+sigpolicy.CosignTag(img.Digest), nil), http.StatusAccepted)
	clock.Add(sigPassTTL - time.Second)
	tr.wantStatus(tr.do(http.MethodGet, "/v2/team/app/manifests/v1", nil), http.StatusOK)
	clock.Add(2 * time.Second)
	wantDenied(t, tr, tr.do(http.MethodGet, "/v2/team/app/manifests/v1", nil), "team/**")
}

// Pulls at once share the verdict cache: each gets its own right answer.
func TestSignatureConcurrentPulls(t *testing.T) {
	s := newSigners(t)
	tr := newTestRegistry(t, func(c *Config) {
		c.SignaturePolicies = []*sigpolicy.Policy{s.policy(t, "team/**", false)}
	})
	base := tr.srv.URL
	signed := pushTestImage(t, base, "team/app", "signed", "signed")
	signCosign(t, base, "team/app", s.key, signed, signed.Digest, false)
	pushTestImage(t, base, "team/app", "unsigned", "unsigned")
	errs := make(chan string, 32)
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tag, want := "signed", http.StatusOK
			if i%2 == 1 {
				tag, want = "unsigned", http.StatusForbidden
			}
			resp, err := tr.srv.Client().Get(base + "/v2/team/app/manifests/" + tag)
			if err != nil {
				errs <- err.Error()
				return
			}
			resp.Body.Close()
			if resp.StatusCode != want {
				errs <- tag + ": " + resp.Status
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// layerOfTestImage is the one layer pushTestImage made for seed.
func layerOfTestImage(seed string) string { return sigtest.Of("", []byte("layer of "+seed)).Digest }

// A blob of a repository under a policy is served only when a manifest of
// that repository that passed the policy references it: knowing the layer
// digest of an unsigned image is not a way around the manifest refusal.
func TestSignaturePolicyBlobsLocal(t *testing.T) {
	s := newSigners(t)
	tr := newTestRegistry(t, func(c *Config) {
		c.SignaturePolicies = []*sigpolicy.Policy{s.policy(t, "team/**", false)}
	})
	base, repo := tr.srv.URL, "team/app"
	signed := pushTestImage(t, base, repo, "signed", "signed")
	signCosign(t, base, repo, s.key, signed, signed.Digest, false)
	pushTestImage(t, base, repo, "unsigned", "unsigned")
	// Signed, but under no tag: only its manifest pull vouches for it.
	bydigest := pushTestImage(t, base, repo, "", "bydigest")
	signCosign(t, base, repo, s.key, bydigest, bydigest.Digest, true)

	blob := func(method, d string) response { return tr.do(method, "/v2/"+repo+"/blobs/"+d, nil) }
	// The unsigned image's layer: refused, and so is a digest the store
	// never held, the same way (no oracle of what exists).
	wantDenied(t, tr, blob(http.MethodGet, layerOfTestImage("unsigned")), "team/**")
	wantDenied(t, tr, blob(http.MethodGet, sigtest.Of("", []byte("nothing")).Digest), "team/**")
	// A tagged signed image's layer is served even before its manifest
	// was pulled here (another replica may have served it).
	tr.wantStatus(blob(http.MethodGet, layerOfTestImage("signed")), http.StatusOK)
	wantDenied(t, tr, blob(http.MethodGet, layerOfTestImage("bydigest")), "team/**")
	// A HEAD carries no bytes, and pushers ask it before every upload:
	// it answers as without a policy.
	tr.wantStatus(blob(http.MethodHead, layerOfTestImage("unsigned")), http.StatusOK)
	tr.wantError(blob(http.MethodHead, sigtest.Of("", []byte("nothing")).Digest), http.StatusNotFound, CodeBlobUnknown)
	resp := blob(http.MethodGet, layerOfTestImage("unsigned"))
	if !strings.Contains(string(resp.body), "signature policy team/**") {
		t.Errorf("blob refusal does not name the policy: %s", resp.body)
	}
	tr.wantStatus(tr.do(http.MethodGet, "/v2/"+repo+"/manifests/"+bydigest.Digest, nil), http.StatusOK)
	tr.wantStatus(blob(http.MethodGet, layerOfTestImage("bydigest")), http.StatusOK)

	// The signature's own blobs are what a client reads to verify.
	sigm := tr.do(http.MethodGet, "/v2/"+repo+"/manifests/"+sigpolicy.CosignTag(signed.Digest), nil)
	tr.wantStatus(sigm, http.StatusOK)
	var doc manifestDoc
	if err := json.Unmarshal(sigm.body, &doc); err != nil || len(doc.Layers) != 1 {
		t.Fatalf("signature manifest: %v %s", err, sigm.body)
	}
	tr.wantStatus(blob(http.MethodGet, doc.Layers[0].Digest), http.StatusOK)

	// A mount from the protected repository does not carry the unsigned
	// layer out of it: the spec's fallback, an upload session, instead.
	unsignedLayer := layerOfTestImage("unsigned")
	resp = tr.do(http.MethodPost, "/v2/other/app/blobs/uploads/?mount="+unsignedLayer+"&from="+repo, nil)
	tr.wantStatus(resp, http.StatusAccepted)
	tr.wantError(tr.do(http.MethodGet, "/v2/other/app/blobs/"+unsignedLayer, nil), http.StatusNotFound, CodeBlobUnknown)
	resp = tr.do(http.MethodPost, "/v2/other/app/blobs/uploads/?mount="+unsignedLayer, nil)
	tr.wantStatus(resp, http.StatusAccepted)
	tr.wantError(tr.do(http.MethodGet, "/v2/other/app/blobs/"+unsignedLayer, nil), http.StatusNotFound, CodeBlobUnknown)
	// A signed image's layer mounts as before.
	tr.wantStatus(tr.do(http.MethodPost, "/v2/other/app/blobs/uploads/?mount="+layerOfTestImage("signed")+"&from="+repo, nil), http.StatusCreated)
}

// countingHandler counts the blob GETs that reach an upstream.
type countingHandler struct {
	h     http.Handler
	mu    sync.Mutex
	blobs map[string]int
}

func (c *countingHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if i := strings.Index(r.URL.Path, "/blobs/sha256:"); i >= 0 {
		c.mu.Lock()
		c.blobs[r.URL.Path[i+len("/blobs/"):]]++
		c.mu.Unlock()
	}
	c.h.ServeHTTP(w, r)
}

func (c *countingHandler) count(d string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.blobs[d]
}

// A mirror asks upstream for a blob of a protected name only once a
// verified manifest of that name referenced it.
func TestSignaturePolicyBlobsMirror(t *testing.T) {
	s := newSigners(t)
	counter := &countingHandler{h: ggcr.New(ggcr.Logger(nopLogger()), ggcr.WithReferrersSupport(true)), blobs: map[string]int{}}
	up := httptest.NewServer(counter)
	t.Cleanup(up.Close)
	m, err := NewMirror(MirrorConfig{Prefix: "docker.io", Upstreams: []string{up.URL}, Default: true, Hosts: []string{"docker.mirror.test"}})
	if err != nil {
		t.Fatal(err)
	}
	tr := newTestRegistry(t, func(c *Config) {
		c.Mirrors = []*Mirror{m}
		c.SignaturePolicies = []*sigpolicy.Policy{s.policy(t, "docker.io/myorg/**", false)}
	})
	signed := pushTestImage(t, up.URL, "myorg/app", "signed", "signed")
	signCosign(t, up.URL, "myorg/app", s.key, signed, signed.Digest, false)
	pushTestImage(t, up.URL, "myorg/app", "unsigned", "unsigned")

	forms := []struct{ path, host string }{
		{path: "/v2/docker.io/myorg/app/blobs/%s"},
		{path: "/docker.io/v2/myorg/app/blobs/%s"},
		{path: "/v2/myorg/app/blobs/%s?ns=docker.io"},
		{path: "/v2/myorg/app/blobs/%s"},
		{path: "/v2/myorg/app/blobs/%s", host: "docker.mirror.test"},
	}
	get := func(method, form, d, host string) response {
		var hdr []string
		if host != "" {
			hdr = []string{"Host", host}
		}
		return tr.do(method, sprintfPath(form, d), nil, hdr...)
	}
	unsignedLayer, signedLayer := layerOfTestImage("unsigned"), layerOfTestImage("signed")
	for _, f := range forms {
		for _, method := range []string{http.MethodHead, http.MethodGet} {
			wantDenied(t, tr, get(method, f.path, unsignedLayer, f.host), "docker.io/myorg/**")
			// Before any manifest of it was verified, not even a
			// signed image's layer is fetched.
			wantDenied(t, tr, get(method, f.path, signedLayer, f.host), "docker.io/myorg/**")
		}
	}
	wantDenied(t, tr, tr.do(http.MethodGet, "/v2/docker.io/myorg/app/manifests/unsigned", nil), "docker.io/myorg/**")
	wantDenied(t, tr, get(http.MethodGet, forms[0].path, unsignedLayer, ""), "docker.io/myorg/**")
	if n := counter.count(unsignedLayer) + counter.count(signedLayer); n != 0 {
		t.Errorf("upstream was asked %d times for layers no verified manifest referenced", n)
	}

	tr.wantStatus(tr.do(http.MethodGet, "/v2/docker.io/myorg/app/manifests/signed", nil), http.StatusOK)
	for _, f := range forms {
		resp := get(http.MethodGet, f.path, signedLayer, f.host)
		tr.wantStatus(resp, http.StatusOK)
		if string(resp.body) != "layer of signed" {
			t.Errorf("%s: %q", f.path, resp.body)
		}
	}
	wantDenied(t, tr, get(http.MethodGet, forms[0].path, unsignedLayer, ""), "docker.io/myorg/**")
	if n := counter.count(unsignedLayer); n != 0 {
		t.Errorf("upstream was asked %d times for the unsigned layer", n)
	}
}

// Parallel blob requests that all need a scan (this process never saw the
// manifest pass) share it and are all served: none is refused while
// another's scan runs.
func TestSignaturePolicyBlobsScanShared(t *testing.T) {
	s := newSigners(t)
	tr := newTestRegistry(t, func(c *Config) {
		c.SignaturePolicies = []*sigpolicy.Policy{s.policy(t, "team/**", false)}
	})
	base := tr.srv.URL
	for i := range 40 { // many tags to scan, so that the scan takes a while
		img := pushTestImage(t, base, "team/app", fmt.Sprintf("v%d", i), fmt.Sprintf("seed%d", i))
		signCosign(t, base, "team/app", s.key, img, img.Digest, false)
	}
	errs := make(chan string, 40)
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() {
			resp, err := tr.srv.Client().Get(base + "/v2/team/app/blobs/" + layerOfTestImage(fmt.Sprintf("seed%d", i)))
			if err != nil {
				errs <- err.Error()
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				errs <- fmt.Sprintf("seed%d: %s", i, resp.Status)
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// Signing reads what it signs: cosign and notation GET the manifest
// first. A caller that may push to the repository, with a signing tool's
// User-Agent, reads its unsigned manifests; nobody else does, no blob is
// served that way, and a mirror (where nobody pushes) never does it.
func TestSignaturePolicySignersRead(t *testing.T) {
	s := newSigners(t)
	up := httptest.NewServer(ggcr.New(ggcr.Logger(nopLogger())))
	t.Cleanup(up.Close)
	m, err := NewMirror(MirrorConfig{Prefix: "docker.io", Upstreams: []string{up.URL}})
	if err != nil {
		t.Fatal(err)
	}
	tr := newTestRegistry(t, func(c *Config) {
		c.Mirrors = []*Mirror{m}
		c.SignaturePolicies = []*sigpolicy.Policy{s.policy(t, "team/**", false), s.policy(t, "docker.io/**", false)}
		c.CanPush = func(r *http.Request, repo string) bool { return r.Header.Get("X-Test-Pusher") == repo }
	})
	img := pushTestImage(t, tr.srv.URL, "team/app", "unsigned", "unsigned")
	pushTestImage(t, up.URL, "myorg/app", "unsigned", "mirrored")
	cosignUA, notationUA := "cosign/v2.6.5 (linux; amd64)", "notation/v1.3.2"
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		for _, ref := range []string{"unsigned", img.Digest} {
			path := "/v2/team/app/manifests/" + ref
			tr.wantStatus(tr.do(method, path, nil, "User-Agent", cosignUA, "X-Test-Pusher", "team/app"), http.StatusOK)
			tr.wantStatus(tr.do(method, path, nil, "User-Agent", notationUA, "X-Test-Pusher", "team/app"), http.StatusOK)
			wantDenied(t, tr, tr.do(method, path, nil, "User-Agent", cosignUA), "team/**")
			wantDenied(t, tr, tr.do(method, path, nil, "User-Agent", cosignUA, "X-Test-Pusher", "team/other"), "team/**")
			wantDenied(t, tr, tr.do(method, path, nil, "User-Agent", "containerd/1.6", "X-Test-Pusher", "team/app"), "team/**")
		}
		wantDenied(t, tr, tr.do(method, "/v2/docker.io/myorg/app/manifests/unsigned", nil, "User-Agent", cosignUA, "X-Test-Pusher", "docker.io/myorg/app"), "docker.io/**")
	}
	wantDenied(t, tr, tr.do(http.MethodGet, "/v2/team/app/blobs/"+layerOfTestImage("unsigned"), nil, "User-Agent", cosignUA, "X-Test-Pusher", "team/app"), "team/**")

	// Read-only, nobody may push, so no signer reads what is unsigned.
	cfg := tr.h.cfg
	cfg.ReadOnly = true
	ro := httptest.NewServer(New(cfg))
	t.Cleanup(ro.Close)
	req, _ := http.NewRequest(http.MethodGet, ro.URL+"/v2/team/app/manifests/unsigned", nil)
	req.Header.Set("User-Agent", cosignUA)
	req.Header.Set("X-Test-Pusher", "team/app")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("read-only registry, signer's GET of an unsigned manifest: %s, want 403", resp.Status)
	}
}

// TestSignaturePolicySignedRightAfterRefusal: a pull refused for want of
// a signature, then the signature pushed, then the pull again at once
// (as a user does, and as the real-CLI e2e test does): the refusal kept
// for sigFailTTL must not outlive the signature's push.
func TestSignaturePolicySignedRightAfterRefusal(t *testing.T) {
	s := newSigners(t)
	tr := newTestRegistry(t, func(c *Config) {
		c.SignaturePolicies = []*sigpolicy.Policy{s.policy(t, "team/**", false)}
	})
	base, repo := tr.srv.URL, "team/app"
	img := pushTestImage(t, base, repo, "v1", "v1")
	wantDenied(t, tr, tr.do(http.MethodGet, "/v2/"+repo+"/manifests/v1", nil), "team/**")
	signCosign(t, base, repo, s.key, img, img.Digest, false)
	tr.wantStatus(tr.do(http.MethodGet, "/v2/"+repo+"/manifests/v1", nil), http.StatusOK)
}
