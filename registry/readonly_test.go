package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"go.uber.org/zap/zaptest"
)

// readOnlyEnv is one store served twice: by a writable handler (to put
// content in) and by a read-only one, both with docker.io mirrored from a
// fake upstream.
type readOnlyEnv struct {
	rw, ro *testRegistry
	up     *fakeUpstream
}

func newReadOnlyEnv(t *testing.T) *readOnlyEnv {
	t.Helper()
	rw := newTestRegistry(t)
	up := newFakeUpstream(t)
	m, err := NewMirror(MirrorConfig{Prefix: "docker.io", Upstreams: []string{up.srv.URL}})
	if err != nil {
		t.Fatal(err)
	}
	ro := New(Config{Store: rw.store, Logger: zaptest.NewLogger(t), Mirrors: []*Mirror{m}, ReadOnly: true})
	srv := httptest.NewServer(ro)
	t.Cleanup(srv.Close)
	return &readOnlyEnv{rw: rw, ro: &testRegistry{t: t, srv: srv, store: rw.store, obs: &recordingObserver{}}, up: up}
}

func hostOf(srv *httptest.Server) string { return strings.TrimPrefix(srv.URL, "http://") }

// wantReadOnly checks that an answer is the read-only refusal.
func wantReadOnly(t *testing.T, what string, status int, body []byte) {
	t.Helper()
	var env envelope
	if status != http.StatusForbidden || json.Unmarshal(body, &env) != nil || len(env.Errors) != 1 ||
		env.Errors[0].Code != CodeDenied || !strings.Contains(env.Errors[0].Message, "read-only") {
		t.Errorf("%s: %d %s, want 403 DENIED saying the registry is read-only", what, status, body)
	}
}

// TestReadOnlyRefusesEveryWrite: each kind of write is refused with 403
// DENIED before its body is read (the body is withheld and the answer
// still comes), and nothing changes in the store.
func TestReadOnlyRefusesEveryWrite(t *testing.T) {
	env := newReadOnlyEnv(t)
	img, _ := random.Image(512, 1)
	ref, _ := name.ParseReference(hostOf(env.rw.srv) + "/team/app:v1")
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	md, _ := img.Digest()
	layer, _ := layerOf(t, img)
	open, err := env.rw.store.NewUpload(t.Context(), "team/app")
	if err != nil {
		t.Fatal(err)
	}
	digest := "sha256:" + fmt.Sprintf("%064x", 1)
	manifest := []string{"Content-Type", "application/vnd.oci.image.manifest.v1+json"}
	cases := []struct {
		name, method, path string
		hdr                []string
	}{
		{"upload start", http.MethodPost, "/v2/team/app/blobs/uploads/", nil},
		{"monolithic upload", http.MethodPost, "/v2/team/app/blobs/uploads/?digest=" + digest, nil},
		{"mount", http.MethodPost, "/v2/team/other/blobs/uploads/?mount=" + layer + "&from=team/app", nil},
		{"upload chunk", http.MethodPatch, "/v2/team/app/blobs/uploads/" + open.ID, nil},
		{"upload finish", http.MethodPut, "/v2/team/app/blobs/uploads/" + open.ID + "?digest=" + digest, nil},
		{"upload cancel", http.MethodDelete, "/v2/team/app/blobs/uploads/" + open.ID, nil},
		{"manifest put, new tag", http.MethodPut, "/v2/team/app/manifests/v2", manifest},
		{"manifest put, moved tag", http.MethodPut, "/v2/team/app/manifests/v1", manifest},
		{"manifest put, new repository", http.MethodPut, "/v2/team/new/manifests/v1", manifest},
		{"manifest delete", http.MethodDelete, "/v2/team/app/manifests/" + md.String(), nil},
		{"tag delete", http.MethodDelete, "/v2/team/app/manifests/v1", nil},
		{"blob delete", http.MethodDelete, "/v2/team/app/blobs/" + layer, nil},
		{"push into a mirror", http.MethodPost, "/v2/docker.io/library/debian/blobs/uploads/", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			declared := 4096
			if c.method == http.MethodDelete {
				declared = 0
			}
			resp, body := withheldBody(t, hostOf(env.ro.srv), c.method, c.path, declared, c.hdr...)
			wantReadOnly(t, c.method+" "+c.path, resp.StatusCode, body)
		})
	}
	// Nothing changed: the tag, the manifest, the blob and the open
	// session are all still there, and no other repository appeared.
	if d, err := env.rw.store.ResolveTag(t.Context(), "team/app", "v1"); err != nil || d.String() != md.String() {
		t.Errorf("tag v1: %v %v, want %s", d, err, md)
	}
	if r := env.ro.do(http.MethodHead, "/v2/team/app/blobs/"+layer, nil); r.StatusCode != http.StatusOK {
		t.Errorf("blob after refused delete: %d", r.StatusCode)
	}
	if u, err := env.rw.store.GetUpload(t.Context(), "team/app", open.ID); err != nil || u.Size != 0 {
		t.Errorf("upload session after refused writes: %+v %v", u, err)
	}
	for _, repo := range []string{"team/other", "team/new"} {
		if r := env.ro.do(http.MethodGet, "/v2/"+repo+"/tags/list", nil); r.StatusCode != http.StatusNotFound {
			t.Errorf("%s after refused writes: %d %s", repo, r.StatusCode, r.body)
		}
	}
}

// TestReadOnlyServesReads: pulls, HEADs, tag lists, the catalog and pulls
// through a mirror (which fill the cache) all work while read-only, and a
// client's push fails with the message.
func TestReadOnlyServesReads(t *testing.T) {
	env := newReadOnlyEnv(t)
	img, _ := random.Image(512, 2)
	rwRef, _ := name.ParseReference(hostOf(env.rw.srv) + "/team/app:v1")
	if err := remote.Write(rwRef, img); err != nil {
		t.Fatal(err)
	}
	roRef, _ := name.ParseReference(hostOf(env.ro.srv) + "/team/app:v1")
	pulled, err := remote.Image(roRef)
	if err != nil {
		t.Fatalf("pull: %v", err)
	}
	wantSameImage(t, img, pulled)
	if _, err := remote.Head(roRef); err != nil {
		t.Errorf("HEAD manifest: %v", err)
	}
	layer, _ := layerOf(t, img)
	for _, c := range []struct{ method, path string }{
		{http.MethodGet, "/v2/"}, {http.MethodHead, "/v2/"},
		{http.MethodGet, "/v2/_catalog"}, {http.MethodGet, "/v2/team/app/tags/list"},
		{http.MethodGet, "/v2/team/app/blobs/" + layer}, {http.MethodHead, "/v2/team/app/blobs/" + layer},
	} {
		if r := env.ro.do(c.method, c.path, nil); r.StatusCode != http.StatusOK {
			t.Errorf("%s %s: %d %s", c.method, c.path, r.StatusCode, r.body)
		}
	}

	// A mirror still fetches what it has not cached: that is a pull.
	up, _ := random.Image(512, 1)
	env.up.pushImage("library/debian", "bookworm", up)
	mRef, _ := name.ParseReference(hostOf(env.ro.srv) + "/docker.io/library/debian:bookworm")
	got, err := remote.Image(mRef)
	if err != nil {
		t.Fatalf("pull through the mirror: %v", err)
	}
	wantSameImage(t, up, got)
	if _, err := remote.Head(mRef); err != nil {
		t.Errorf("HEAD through the mirror: %v", err)
	}

	// A client's push fails, and says why.
	other, _ := random.Image(256, 1)
	err = remote.Write(roRef, other)
	var terr *transport.Error
	if !errors.As(err, &terr) || terr.StatusCode != http.StatusForbidden || !strings.Contains(err.Error(), "read-only") {
		t.Errorf("push while read-only: %v, want 403 saying read-only", err)
	}
	// The push's HEADs for existing blobs are reads and were answered;
	// the tag still names the first image.
	if d, _ := env.rw.store.ResolveTag(t.Context(), "team/app", "v1"); d.String() != imageDigest(t, img) {
		t.Errorf("tag moved by a refused push: %s", d)
	}
}

func wantSameImage(t *testing.T, want, got v1.Image) {
	t.Helper()
	if imageDigest(t, want) != imageDigest(t, got) {
		t.Fatalf("pulled %s, want %s", imageDigest(t, got), imageDigest(t, want))
	}
	ls, err := got.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatalf("layer: %v", err)
		}
		rc.Close()
	}
}

func imageDigest(t *testing.T, img v1.Image) string {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}
