package registry

import (
	"net/http"
	"strings"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache"
)

// A pusher chooses a manifest's bytes and, through Content-Type or the
// document's mediaType, the Content-Type it is served with. Served as
// text/html (or SVG, XHTML) on the registry's origin, a manifest holding a
// script would run as a page of the site for whoever opens its URL, with
// the site's cookies: the OIDC session, which makes API keys. Only JSON
// media types are manifests; and whatever a store holds (pushed before
// this check), no API answer may run as a page of the site.
func TestManifestActiveContentRefused(t *testing.T) {
	tr := newTestRegistry(t)
	page := `{"schemaVersion":2,"x":"<script>fetch('/_oci/auth/session')</script>"}`
	for _, tc := range []struct{ name, ct, body string }{
		{"text/html", "text/html", page},
		{"text/html with charset", "text/html; charset=utf-8", page},
		{"svg", "image/svg+xml", page},
		{"xhtml", "application/xhtml+xml", page},
		{"xml", "application/xml", page},
		{"javascript", "text/javascript", page},
		{"octet-stream", "application/octet-stream", page},
		{"mediaType field only", "", `{"schemaVersion":2,"mediaType":"text/html","x":"<script>alert(1)</script>"}`},
		// The field is served as Content-Type verbatim: parameters there
		// ending in +json leave a browser's type XHTML.
		{"mediaType field with a parameter", "", `{"schemaVersion":2,"mediaType":"application/xhtml+xml;x=+json","x":"<script>alert(1)</script>"}`},
		{"mediaType field with a spaced parameter", "", `{"schemaVersion":2,"mediaType":"application/xhtml+xml; x=+json","x":"<script>alert(1)</script>"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := tr.with(t)
			var hdr []string
			if tc.ct != "" {
				hdr = []string{"Content-Type", tc.ct}
			}
			tr.wantError(tr.do("PUT", "/v2/pages/manifests/x", []byte(tc.body), hdr...), http.StatusBadRequest, CodeManifestInvalid)
		})
	}
	tr.wantError(tr.do("GET", "/v2/pages/manifests/x", nil), http.StatusNotFound, CodeManifestUnknown)

	// JSON media types of any kind are still manifests (artifacts).
	for _, mt := range []string{"application/vnd.example.thing.v1+json", "application/json"} {
		body := []byte(`{"schemaVersion":2,"mediaType":"` + mt + `","blobs":[]}`)
		tr.wantStatus(tr.pushManifest("pages", "artifact", mt, body), http.StatusCreated)
	}

	// One already stored as a page is served so that no browser runs it.
	body := []byte(page)
	d := cache.FromBytes(cache.SHA256, body)
	if err := tr.store.PutManifest(t.Context(), "pages", cache.Manifest{MediaType: "text/html", Digest: d}, body, []string{"old"}); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/v2/pages/manifests/old", "/v2/pages/manifests/" + d.String()} {
		resp := tr.do("GET", path, nil)
		tr.wantStatus(resp, http.StatusOK)
		if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("GET %s: X-Content-Type-Options %q", path, got)
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "sandbox") || !strings.Contains(csp, "default-src 'none'") {
			t.Errorf("GET %s: Content-Security-Policy %q, want a sandbox with nothing allowed", path, csp)
		}
	}
}
