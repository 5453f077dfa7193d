package front

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
)

// TestBackendContentInert: a backend that serves a manifest as the media
// type its pusher chose (go-containerregistry's registry keeps any) makes
// a text/html page of the pusher's bytes; through the front it is served
// on this site's origin, so no browser may run it as a page of the site.
func TestBackendContentInert(t *testing.T) {
	rg := newRig(t, nil)
	page := []byte(`{"schemaVersion":2,"x":"<script>alert(document.domain)</script>"}`)
	admin := rg.token(t, "admin", "repository:team/page:pull,push")
	req, _ := http.NewRequest("PUT", rg.backend.URL+"/v2/team/page/manifests/x", bytes.NewReader(page))
	req.Header.Set("Authorization", "Bearer "+admin)
	req.Header.Set("Content-Type", "text/html")
	put, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	put.Body.Close()
	if put.StatusCode != http.StatusCreated {
		t.Fatalf("seeding the page: %d", put.StatusCode)
	}
	resp, body := rg.do(t, "GET", "/v2/team/page/manifests/x", "Authorization", "Bearer "+admin)
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("the backend's page through the front: %d %q %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("X-Content-Type-Options %q", got)
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "sandbox") || !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("Content-Security-Policy %q, want a sandbox with nothing allowed", csp)
	}
}
