package registry

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/caddy-oci/caddy-oci/cache"
)

// TestGCAfterManifestDelete: deleting an image's manifest and collecting
// frees the layers only it used, through the API, while layers another
// image of the repository or another repository uses stay pullable.
func TestGCAfterManifestDelete(t *testing.T) {
	// A grace period of a nanosecond: everything is past it by the time
	// GC runs.
	store, err := cache.Open(cache.Options{Dir: t.TempDir(), GCGrace: time.Nanosecond, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(New(Config{Store: store, Logger: zaptest.NewLogger(t), Observer: &recordingObserver{}}))
	t.Cleanup(func() {
		srv.Close()
		if err := store.Close(); err != nil {
			t.Error(err)
		}
	})
	tr := &testRegistry{t: t, srv: srv, store: store}

	gone := tr.image("gc/app", "shared in repo", "only in the deleted image", "shared across repos")
	tr.wantStatus(tr.pushManifest("gc/app", "old", mtManifest, gone), http.StatusCreated)
	tr.wantStatus(tr.pushManifest("gc/app", "new", mtManifest, tr.image("gc/app", "shared in repo")), http.StatusCreated)
	tr.wantStatus(tr.pushManifest("gc/other", "v1", mtManifest, tr.image("gc/other", "shared across repos")), http.StatusCreated)

	gd := cache.FromBytes(cache.SHA256, gone)
	tr.wantStatus(tr.do("DELETE", "/v2/gc/app/manifests/"+gd.String(), nil), http.StatusAccepted)
	st, err := store.GC()
	if err != nil {
		t.Fatal(err)
	}
	if st.LinksRemoved != 2 || st.BlobsRemoved != 2 {
		t.Errorf("GC = %+v, want 2 links and 2 blobs (a layer and the manifest)", st)
	}

	blob := func(repo, content string) string {
		return "/v2/" + repo + "/blobs/" + cache.FromBytes(cache.SHA256, []byte(content)).String()
	}
	tr.wantError(tr.do("GET", blob("gc/app", "only in the deleted image"), nil), http.StatusNotFound, CodeBlobUnknown)
	tr.wantError(tr.do("GET", blob("gc/app", "shared across repos"), nil), http.StatusNotFound, CodeBlobUnknown)
	for _, b := range []struct{ repo, content string }{
		{"gc/app", "shared in repo"},
		{"gc/app", `{"architecture":"amd64","os":"linux"}`}, // the config, in both images
		{"gc/other", "shared across repos"},
	} {
		tr.wantStatus(tr.do("GET", blob(b.repo, b.content), nil), http.StatusOK)
	}
	if _, err := store.StatBlob(t.Context(), cache.FromBytes(cache.SHA256, []byte("only in the deleted image"))); err == nil {
		t.Error("the deleted image's own layer is still on disk")
	}
	tr.wantStatus(tr.do("GET", "/v2/gc/app/manifests/new", nil), http.StatusOK)
}
