package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
	"golang.org/x/crypto/bcrypt"

	"github.com/caddy-oci/caddy-oci/registry/sigpolicy"
	"github.com/caddy-oci/caddy-oci/registry/sigpolicy/sigtest"
)

// sigPusher pushes artifacts over plain HTTP to the registry at base,
// with Basic credentials if user is set.
type sigPusher struct {
	t          *testing.T
	base       string
	user, pass string
}

func (p sigPusher) send(method, path, ct string, body []byte, want int) {
	p.t.Helper()
	req, err := http.NewRequest(method, p.base+path, bytes.NewReader(body))
	if err != nil {
		p.t.Fatal(err)
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	if p.user != "" {
		req.SetBasicAuth(p.user, p.pass)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		p.t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want {
		p.t.Fatalf("%s %s: %d, want %d: %s", method, path, resp.StatusCode, want, b)
	}
}

// artifact pushes blobs, then manifest as repo:ref (ref "": by digest).
func (p sigPusher) artifact(repo, ref string, manifest []byte, blobs ...[]byte) sigtest.Descriptor {
	p.t.Helper()
	for _, b := range blobs {
		p.send(http.MethodPost, "/v2/"+repo+"/blobs/uploads/?digest="+sigtest.Of("", b).Digest, "application/octet-stream", b, http.StatusCreated)
	}
	var doc struct {
		MediaType string `json:"mediaType"`
	}
	if err := json.Unmarshal(manifest, &doc); err != nil {
		p.t.Fatal(err)
	}
	desc := sigtest.Of(doc.MediaType, manifest)
	if ref == "" {
		ref = desc.Digest
	}
	p.send(http.MethodPut, "/v2/"+repo+"/manifests/"+ref, doc.MediaType, manifest, http.StatusCreated)
	return desc
}

// image pushes a small image whose layer seed makes distinct.
func (p sigPusher) image(repo, tag, seed string) sigtest.Descriptor {
	p.t.Helper()
	cfg := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"seed":"` + seed + `"}`)
	m, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        sigtest.Of("application/vnd.oci.image.config.v1+json", cfg),
		"layers":        []any{},
	})
	return p.artifact(repo, tag, m, cfg)
}

func (p sigPusher) cosignSign(repo string, key *sigtest.CosignKey, d sigtest.Descriptor) {
	p.t.Helper()
	payload := sigtest.CosignPayload(repo, d.Digest)
	sig, err := key.Sign(payload)
	if err != nil {
		p.t.Fatal(err)
	}
	m, blobs := sigtest.CosignManifest(payload, sig, nil)
	p.artifact(repo, sigpolicy.CosignTag(d.Digest), m, blobs...)
}

// TestSignaturePolicyClients: crane and skopeo pull a signed image under
// require_signature, local and mirrored, and get the policy's DENIED error
// for an unsigned one, which the audit log records.
func TestSignaturePolicyClients(t *testing.T) {
	crane := tool(t, "crane")
	skopeo := tool(t, "skopeo")
	dir := t.TempDir()
	key, err := sigtest.NewCosignKey()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "cosign.pub")
	if err := os.WriteFile(keyFile, key.PublicPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	hash, err := bcrypt.GenerateFromPassword([]byte("ci-secret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	htpasswd := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(htpasswd, []byte("ci:"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	up := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0)), registry.WithReferrersSupport(true)))
	t.Cleanup(up.Close)
	upPush := sigPusher{t: t, base: up.URL}
	signed := upPush.image("myorg/app", "signed", "mirror-signed")
	upPush.cosignSign("myorg/app", key, signed)
	upPush.image("myorg/app", "unsigned", "mirror-unsigned")

	dataDir := filepath.Join(dir, "data")
	s := siteServer(t, dataDir, fmt.Sprintf(`	oci_registry {
		storage %s
		local team
		mirror docker.io {
			upstream %s
			default
		}
		require_signature docker.io/myorg/** {
			cosign_key %s
		}
		require_signature team/** {
			cosign_key %s
		}
		auth {
			htpasswd %s
			fail_delay 10ms
			group pushers ci
			access ** {
				anonymous read
				group pushers read create
			}
		}
	}`, strconv.Quote(dataDir), up.URL, strconv.Quote(keyFile), strconv.Quote(keyFile), strconv.Quote(htpasswd)), http.StatusUnauthorized)

	local := sigPusher{t: t, base: s.url(""), user: "ci", pass: "ci-secret"}
	ls := local.image("team/app", "signed", "local-signed")
	local.cosignSign("team/app", key, ls)
	local.image("team/app", "unsigned", "local-unsigned")

	for _, ref := range []string{
		s.addr + "/team/app:signed",
		s.addr + "/docker.io/myorg/app:signed",
		s.addr + "/myorg/app:signed", // the default mirror
	} {
		run(t, nil, crane, "digest", "--insecure", ref)
		run(t, nil, crane, "manifest", "--insecure", ref)
		run(t, nil, skopeo, "inspect", "--raw", "--tls-verify=false", "docker://"+ref)
	}
	for _, c := range []struct{ ref, policy string }{
		{s.addr + "/team/app:unsigned", "team/**"},
		{s.addr + "/docker.io/myorg/app:unsigned", "docker.io/myorg/**"},
		{s.addr + "/myorg/app:unsigned", "docker.io/myorg/**"},
	} {
		want := "refused by signature policy " + c.policy
		out := runFail(t, nil, crane, "manifest", "--insecure", c.ref)
		if !strings.Contains(out, "DENIED") || !strings.Contains(out, want) {
			t.Errorf("crane manifest %s: output lacks DENIED and %q:\n%s", c.ref, want, out)
		}
		out = runFail(t, nil, skopeo, "inspect", "--raw", "--tls-verify=false", "docker://"+c.ref)
		if !strings.Contains(out, want) {
			t.Errorf("skopeo inspect %s: output lacks %q:\n%s", c.ref, want, out)
		}
	}
	if logs := s.out.String(); !strings.Contains(logs, `"signature_policy":"team/**"`) || !strings.Contains(logs, `"signature_policy":"docker.io/myorg/**"`) {
		t.Errorf("the audit log lacks the refusals:\n%s", logs)
	}
}
