package registry

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/cache"
)

// TestCreateOnlyPushCannotMoveTagMeanwhile: a caller who may create tags
// but not move them is judged a creator when its manifest PUT names a tag
// that does not exist yet. It may then hold the body back as long as it
// likes; if the tag appears meanwhile (a maintainer's release), sending
// the body must not move that tag to the caller's manifest: the push is
// judged again as the update it has become.
func TestCreateOnlyPushCannotMoveTagMeanwhile(t *testing.T) {
	ar, tr, ci, root, cd, cfg := newCreateOnlyRegistry(t)

	// Two manifests over one config, told apart by an annotation.
	manifest := func(who string) []byte {
		return []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[],"annotations":{"by":%q}}`,
			MediaTypeOCIManifest, cd, len(cfg), who))
	}
	release, evil := manifest("root"), manifest("ci")

	for _, c := range []struct{ name, path string }{
		{"tag in the path", "/v2/blumeops/app/manifests/v1"},
		{"tag parameter", "/v2/blumeops/app/manifests/" + cache.FromBytes(cache.SHA256, evil).String() + "?tag=v2"},
	} {
		t.Run(c.name, func(t *testing.T) {
			tag := "v1"
			if strings.Contains(c.path, "tag=") {
				tag = "v2"
			}
			// ci's push passes as a create (no such tag yet) and waits,
			// asking to continue: the 100 Continue says the handler has
			// decided and now reads the body.
			conn, err := net.Dial("tcp", ar.host)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			fmt.Fprintf(conn, "PUT %s HTTP/1.1\r\nHost: %s\r\nAuthorization: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n",
				c.path, ar.host, ci, MediaTypeOCIManifest, len(evil))
			br := bufio.NewReader(conn)
			line, err := br.ReadString('\n')
			if err != nil || !strings.Contains(line, "100") {
				t.Fatalf("ci's push was not asked for its body: %q %v", line, err)
			}
			if _, err := br.ReadString('\n'); err != nil { // the blank line after 100 Continue
				t.Fatal(err)
			}

			// Meanwhile the maintainer releases the tag.
			tr := tr.with(t)
			tr.wantStatus(tr.do("PUT", "/v2/blumeops/app/manifests/"+tag, release, "Authorization", root, "Content-Type", MediaTypeOCIManifest), http.StatusCreated)

			// ci's body arrives: the push now moves the tag.
			if _, err := conn.Write(evil); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "DENIED") {
				t.Errorf("ci's stalled push: %d %s, want 403 DENIED", resp.StatusCode, body)
			}
			got, err := ar.store.ResolveTag(t.Context(), "blumeops/app", tag)
			if want := cache.FromBytes(cache.SHA256, release); err != nil || got != want {
				t.Errorf("tag %s points at %s (%v), want the maintainer's %s", tag, got, err, want)
			}
		})
	}
}

// TestCreateOnlyPushCannotRetypeManifest: the bytes of a manifest are its
// digest, but the media type it is served with comes from its push (the
// Content-Type, when the document names none). Pushing the same bytes
// again under another media type changes how every pull of the existing
// manifest is answered (a released image served as an index): that is an
// update, which a caller who may only create is refused.
func TestCreateOnlyPushCannotRetypeManifest(t *testing.T) {
	_, tr, ci, root, cd, cfg := newCreateOnlyRegistry(t)
	// No mediaType of its own: the push's Content-Type says what it is.
	body := []byte(fmt.Sprintf(`{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[]}`, cd, len(cfg)))
	d := cache.FromBytes(cache.SHA256, body)
	tr.wantStatus(tr.do("PUT", "/v2/blumeops/app/manifests/release", body, "Authorization", root, "Content-Type", MediaTypeOCIManifest), http.StatusCreated)

	served := func() string {
		t.Helper()
		resp := tr.do("HEAD", "/v2/blumeops/app/manifests/release", nil, "Authorization", root)
		tr.wantStatus(resp, http.StatusOK)
		return resp.Header.Get("Content-Type")
	}
	for _, ref := range []string{d.String(), "release", "other"} {
		resp := tr.do("PUT", "/v2/blumeops/app/manifests/"+ref, body, "Authorization", ci, "Content-Type", MediaTypeOCIIndex)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(resp.body), "DENIED") {
			t.Errorf("ci pushes the manifest again as an index by %s: %d %s, want 403 DENIED", ref, resp.StatusCode, resp.body)
		}
		if got := served(); got != MediaTypeOCIManifest {
			t.Fatalf("after ci's push by %s the release is served as %q", ref, got)
		}
	}
	// The same push again, same type: nothing changes, a creator may.
	tr.wantStatus(tr.do("PUT", "/v2/blumeops/app/manifests/"+d.String(), body, "Authorization", ci, "Content-Type", MediaTypeOCIManifest), http.StatusCreated)
	// Who may update may retype.
	tr.wantStatus(tr.do("PUT", "/v2/blumeops/app/manifests/"+d.String(), body, "Authorization", root, "Content-Type", MediaTypeOCIIndex), http.StatusCreated)
	if got := served(); got != MediaTypeOCIIndex {
		t.Errorf("after root's push the release is served as %q", got)
	}
}

// newCreateOnlyRegistry is a registry where user ci may read and create
// in blumeops/** (not update) and root is an admin, with an image config
// in blumeops/app for manifests to reference: its digest and bytes.
func newCreateOnlyRegistry(t *testing.T) (ar *authRegistry, tr *testRegistry, ci, root string, cd cache.Digest, cfg []byte) {
	t.Helper()
	hp := testHtpasswd(t, "ci", "ci-pw", "root", "root-pw")
	pol, err := authscope.NewPolicy(authscope.PolicyConfig{
		Repositories: map[string]authscope.RepositoryPolicy{
			"blumeops/**": {Policies: []authscope.Grant{{Users: []string{"ci"}, Actions: []string{"read", "create"}}}},
		},
		Admin: &authscope.AdminPolicy{Users: []string{"root"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ar = newAuthRegistry(t, authscope.Options{Htpasswd: hp, Policy: pol}, "")
	tr = &testRegistry{t: t, srv: ar.srv}
	basic := func(u, p string) string { return "Basic " + base64.StdEncoding.EncodeToString([]byte(u+":"+p)) }
	ci, root = basic("ci", "ci-pw"), basic("root", "root-pw")

	cfg = []byte(`{"architecture":"amd64","os":"linux"}`)
	cd = cache.FromBytes(cache.SHA256, cfg)
	tr.wantStatus(tr.do("POST", "/v2/blumeops/app/blobs/uploads/?digest="+cd.String(), cfg, "Authorization", root), http.StatusCreated)
	return ar, tr, ci, root, cd, cfg
}
