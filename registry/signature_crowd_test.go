package registry

import (
	"encoding/json"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/registry/sigpolicy"
	"github.com/caddy-oci/caddy-oci/registry/sigpolicy/sigtest"
)

// TestSignaturePolicyCrowdedReferrers: whoever may push to a repository
// (a create grant is enough: no tag moves) can add referrers that claim
// to sign an image, and a check reads at most MaxCandidates of them. The
// real signature's digest here sorts after all the junk's (the order
// referrers are listed in), the worst case.
//   - Junk pushed after the image was verified must not hide the
//     signature that passed: it stays pullable after the pass expires.
//   - Junk pushed before the signature costs refusals for a while, not
//     for ever: each check reads signatures it has not seen fail.
//   - A check walks at most MaxListed referrers (each store page costs a
//     query); more referrers of any kind listed before the signature that
//     passed do not hide it either.
func TestSignaturePolicyCrowdedReferrers(t *testing.T) {
	s := newSigners(t)
	tr, clock := clockedSignedRegistry(t, s)
	base, repo := tr.srv.URL, "team/app"
	junk := 3 * sigpolicy.MaxCandidates

	// realSig is a cosign referrer signing img whose digest starts with
	// "f" (cosign's ECDSA signatures differ each time).
	realSig := func(img sigtest.Descriptor) (sigtest.Descriptor, []byte, [][]byte) {
		payload := sigtest.CosignPayload(repo, img.Digest)
		for {
			sig, err := s.key.Sign(payload)
			if err != nil {
				t.Fatal(err)
			}
			m, blobs := sigtest.CosignManifest(payload, sig, &img)
			if d := sigtest.Of("", m); d.Digest[len("sha256:")] == 'f' {
				return d, m, blobs
			}
		}
	}
	// pushJunk pushes n cosign referrers of img signed by another key,
	// each with a digest below below.
	pushJunk := func(img sigtest.Descriptor, below string, n int) {
		for i := 0; n > 0; i++ {
			payload := sigtest.CosignPayload(repo, img.Digest)
			payload = append(payload[:len(payload):len(payload)], []byte(" "+strconv.Itoa(i))...)
			sig, err := s.otherKey.Sign(payload)
			if err != nil {
				t.Fatal(err)
			}
			m, blobs := sigtest.CosignManifest(payload, sig, &img)
			if sigtest.Of("", m).Digest >= below {
				continue
			}
			pushArtifact(t, base, repo, "", m, blobs...)
			n--
		}
	}
	get := func(img sigtest.Descriptor) response {
		return tr.do(http.MethodGet, "/v2/"+repo+"/manifests/"+img.Digest, nil)
	}

	// Junk after a pass.
	img := pushTestImage(t, base, repo, "after", "after")
	sd, m, blobs := realSig(img)
	pushArtifact(t, base, repo, "", m, blobs...)
	tr.wantStatus(get(img), http.StatusOK)
	pushJunk(img, sd.Digest, junk)
	clock.Add(sigPassTTL + time.Second)
	if resp := get(img); resp.StatusCode != http.StatusOK {
		t.Errorf("signed image verified before %d bad signatures were added: %d %s", junk, resp.StatusCode, resp.body)
	}

	// More referrers than a check walks, none a signature, all listed
	// before the one that passed.
	cfg := []byte("{}")
	cfgDesc := sigtest.Of("application/vnd.oci.empty.v1+json", cfg)
	putTo(t, http.MethodPost, base+"/v2/"+repo+"/blobs/uploads/?digest="+cfgDesc.Digest, "application/octet-stream", cfg, http.StatusCreated)
	for i, n := 0, 0; n < sigpolicy.MaxListed+10; i++ {
		m, _ := json.Marshal(map[string]any{
			"schemaVersion": 2, "mediaType": MediaTypeOCIManifest, "artifactType": "application/vnd.example.note",
			"config": cfgDesc, "layers": []any{}, "subject": img, "annotations": map[string]string{"n": strconv.Itoa(i)},
		})
		if sigtest.Of("", m).Digest >= sd.Digest {
			continue
		}
		putTo(t, http.MethodPut, base+"/v2/"+repo+"/manifests/"+sigtest.Of("", m).Digest, MediaTypeOCIManifest, m, http.StatusCreated)
		n++
	}
	clock.Add(sigPassTTL + time.Second)
	if resp := get(img); resp.StatusCode != http.StatusOK {
		t.Errorf("signed image verified before %d other referrers were added: %d %s", sigpolicy.MaxListed+10, resp.StatusCode, resp.body)
	}

	// Junk before the signature: refusals for as long as it takes to
	// pass over the junk, MaxCandidates a check.
	img = pushTestImage(t, base, repo, "before", "before")
	sd, m, blobs = realSig(img)
	pushJunk(img, sd.Digest, junk)
	pushArtifact(t, base, repo, "", m, blobs...)
	passed := false
	for i := 0; i <= junk/sigpolicy.MaxCandidates && !passed; i++ {
		passed = get(img).StatusCode == http.StatusOK
		clock.Add(sigFailTTL + time.Millisecond)
	}
	if !passed {
		t.Fatalf("signed image behind %d bad signatures refused on %d checks", junk, junk/sigpolicy.MaxCandidates+1)
	}
	clock.Add(sigPassTTL + time.Second)
	tr.wantStatus(get(img), http.StatusOK)
}
