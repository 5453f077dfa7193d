package registry

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	ggcr "github.com/google/go-containerregistry/pkg/registry"

	"github.com/caddy-oci/caddy-oci/registry/sigpolicy"
	"github.com/caddy-oci/caddy-oci/registry/sigpolicy/sigtest"
)

// REVIEW2 (proves a DoS amplification, not a fix): a signature manifest
// (cosign layer types) whose layers upstream cannot give is verified
// again on every pull of it (verifyManifestSigned returns before any
// verdict is kept for a signature manifest), and vouchSignatureDoc, which
// never sets its mark while a blob is missing, asks upstream for every
// missing layer (up to sigMaterialBlobs = 32) on every such pull: one
// anonymous manifest GET -> 32 upstream blob GETs, without a bound in time.
func TestReview2SignatureManifestMissingBlobsAmplify(t *testing.T) {
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
	// A "signature" manifest whose 32 layers upstream does not hold.
	var layers []any
	var missing []string
	for i := range sigMaterialBlobs {
		d := sigtest.Of(sigpolicy.MediaTypeCosignPayload, []byte(fmt.Sprintf(`{"n":%d}`, i)))
		layers = append(layers, d)
		missing = append(missing, d.Digest)
	}
	man, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     MediaTypeOCIManifest,
		"config":        sigtest.Of("application/vnd.oci.image.config.v1+json", []byte(`{}`)),
		"layers":        layers,
	})
	pushArtifact(t, up.URL, "myorg/app", "sha256-0000000000000000000000000000000000000000000000000000000000000000.sig", man, []byte(`{}`))

	const pulls = 5
	for range pulls {
		resp := tr.do(http.MethodGet, "/v2/docker.io/myorg/app/manifests/sha256-0000000000000000000000000000000000000000000000000000000000000000.sig", nil)
		_ = resp
	}
	total := 0
	for _, d := range missing {
		total += counter.count(d)
	}
	t.Logf("%d pulls of the signature manifest made %d upstream blob GETs", pulls, total)
	if total > sigMaterialBlobs {
		t.Errorf("%d pulls of one signature manifest made %d upstream blob GETs (want at most %d: a missing blob asked once, then remembered)", pulls, total, sigMaterialBlobs)
	}
}
