package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache"
)

// FuzzManifestPut pushes any body under any content type to a registry on
// a real store, by tag or by digest, and holds the push API to its
// promises: a refusal is a client error in the error envelope, never a
// 5xx, and changes nothing (the tag still names what it named before);
// an acceptance stores exactly the bytes pushed, readable by the digest
// the answer gave and, for a tag, by the tag.
func FuzzManifestPut(f *testing.F) {
	tr := newQuietRegistry(f)
	const repo = "fuzz/app"
	image := tr.image(repo, "layer one", "layer two")
	cd := tr.pushBlob(repo, []byte(`{"architecture":"arm64","os":"linux"}`))
	md := cache.FromBytes(cache.SHA256, image)
	index := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` +
		`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + md.String() + `","size":` + strconv.Itoa(len(image)) +
		`,"platform":{"architecture":"amd64","os":"linux"}}]}`)
	referrer := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/example",` +
		`"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"` + cd.String() + `","size":37},"layers":[],` +
		`"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + md.String() + `","size":` + strconv.Itoa(len(image)) + `}}`)
	docker := bytes.Replace(image, []byte("application/vnd.oci.image.manifest.v1+json"), []byte(MediaTypeDockerManifest), 1)
	for _, seed := range []struct {
		body []byte
		ct   string
	}{
		{image, MediaTypeOCIManifest}, {index, MediaTypeOCIIndex}, {referrer, MediaTypeOCIManifest},
		{docker, MediaTypeDockerManifest}, {image, ""}, {image, MediaTypeOCIIndex}, {image, "application/json"},
		{[]byte(`{"schemaVersion":2}`), MediaTypeOCIManifest}, {append(image, ' ', '{', '}'), MediaTypeOCIManifest},
		{[]byte(`{"schemaVersion":2,"manifests":[{"digest":"sha256:x","size":-1}]}`), MediaTypeOCIIndex},
	} {
		for ref := range byte(4) {
			f.Add(seed.body, seed.ct, ref)
		}
	}
	client := tr.srv.Client()
	do := func(t *testing.T, method, path string, body []byte, ct string) (*http.Response, []byte) {
		req, err := http.NewRequest(method, tr.srv.URL+path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		req.Header.Set("Accept", strings.Join([]string{MediaTypeOCIManifest, MediaTypeOCIIndex, MediaTypeDockerManifest, MediaTypeDockerManifestList}, ", "))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		return resp, b
	}
	f.Fuzz(func(t *testing.T, body []byte, ct string, refSel byte) {
		if strings.ContainsAny(ct, "\r\n\x00") {
			return // not a header value a client can send
		}
		ref := []string{"a", "b"}[refSel%2]
		d := cache.FromBytes(cache.SHA256, body)
		switch refSel % 4 {
		case 2:
			ref = d.String()
		case 3:
			ref = cache.FromBytes(cache.SHA256, append(body, 'x')).String() // not the body's
		}
		tagBefore := ""
		if refSel%4 < 2 {
			resp, _ := do(t, http.MethodHead, "/v2/"+repo+"/manifests/"+ref, nil, "")
			tagBefore = resp.Header.Get("Docker-Content-Digest")
		}
		resp, got := do(t, http.MethodPut, "/v2/"+repo+"/manifests/"+ref, body, ct)
		if resp.StatusCode >= 500 {
			t.Fatalf("PUT %s (%q, %d bytes): %d %s", ref, ct, len(body), resp.StatusCode, got)
		}
		if resp.StatusCode != http.StatusCreated {
			var env struct {
				Errors []struct{ Code string } `json:"errors"`
			}
			if resp.StatusCode < 400 || json.Unmarshal(got, &env) != nil || len(env.Errors) == 0 {
				t.Fatalf("PUT %s refused with %d %q, want a client error in the envelope", ref, resp.StatusCode, got)
			}
			if refSel%4 < 2 {
				after, _ := do(t, http.MethodHead, "/v2/"+repo+"/manifests/"+ref, nil, "")
				if now := after.Header.Get("Docker-Content-Digest"); now != tagBefore {
					t.Fatalf("refused PUT moved tag %s from %q to %q", ref, tagBefore, now)
				}
			}
			return
		}
		if refSel%4 == 3 {
			t.Fatalf("PUT under a digest that is not the body's was accepted")
		}
		if got := resp.Header.Get("Docker-Content-Digest"); got != d.String() {
			t.Fatalf("accepted with Docker-Content-Digest %q, want %s", got, d)
		}
		for _, r := range []string{d.String(), ref} {
			g, b := do(t, http.MethodGet, "/v2/"+repo+"/manifests/"+r, nil, "")
			if g.StatusCode != http.StatusOK || !bytes.Equal(b, body) {
				t.Fatalf("GET %s after an accepted PUT: %d, %d bytes (pushed %d)", r, g.StatusCode, len(b), len(body))
			}
		}
	})
}

// newQuietRegistry is newTestRegistry logging nowhere: a fuzz target's
// requests may not log through the F, which is the only testing.TB in
// scope when the registry is made.
func newQuietRegistry(f *testing.F) *testRegistry {
	f.Helper()
	dir := f.TempDir()
	store, err := cache.Open(cache.Options{Dir: dir, Logger: zap.NewNop()})
	if err != nil {
		f.Fatalf("open store: %v", err)
	}
	h := New(Config{Store: store, Logger: zap.NewNop(), Observer: &recordingObserver{}})
	srv := httptest.NewServer(h)
	f.Cleanup(func() {
		srv.Close()
		_ = h.Drain(context.Background())
		if err := store.Close(); err != nil {
			f.Errorf("close store: %v", err)
		}
	})
	return &testRegistry{t: f, srv: srv, store: store, dir: dir, h: h}
}
