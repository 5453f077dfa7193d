package registry

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/composite"
)

// checksCounted is a real store that counts the blob checks a manifest
// push makes (a metadata read and, on S3, a HEAD each).
type checksCounted struct {
	*composite.Store
	has, stored atomic.Int64
}

func (s *checksCounted) HasBlob(ctx context.Context, repo string, d cache.Digest) (cache.BlobInfo, error) {
	s.has.Add(1)
	return s.Store.HasBlob(ctx, repo, d)
}

func (s *checksCounted) CheckBlobStored(ctx context.Context, repo string, d cache.Digest, size int64) error {
	s.stored.Add(1)
	return s.Store.CheckBlobStored(ctx, repo, d, size)
}

// TestManifestRepeatedBlobsCheckedOnce: a manifest may name one blob
// thousands of times (a 4 MiB manifest holds some 40,000 descriptors);
// each blob is checked once, not once per mention, so a pusher cannot
// turn one PUT into tens of thousands of metadata reads and S3 HEADs.
func TestManifestRepeatedBlobsCheckedOnce(t *testing.T) {
	st, _ := newFolderStore(t)
	counted := &checksCounted{Store: st}
	h := New(Config{Store: counted, Logger: zaptest.NewLogger(t)})
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		srv.Close()
		_ = h.Drain(context.Background())
		st.Close()
	})
	tr := &testRegistry{t: t, srv: srv, h: h}
	cfg := []byte(`{"architecture":"amd64","os":"linux"}`)
	cd := tr.pushBlob("team/app", cfg)
	ld := tr.pushBlob("team/app", []byte("layer"))
	layers := make([]map[string]any, 2000)
	for i := range layers {
		layers[i] = map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld.String(), "size": 5}
	}
	body, err := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": MediaTypeOCIManifest,
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.String(), "size": len(cfg)},
		"layers": layers,
	})
	if err != nil {
		t.Fatal(err)
	}
	counted.has.Store(0)
	counted.stored.Store(0)
	resp := tr.pushManifest("team/app", "v1", MediaTypeOCIManifest, body)
	tr.wantStatus(resp, http.StatusCreated)
	if has, stored := counted.has.Load(), counted.stored.Load(); has > 2 || stored > 2 {
		t.Errorf("a manifest naming 2 blobs (one of them 2000 times) made %d metadata reads and %d storage checks, want at most 2 each", has, stored)
	}

	// A missing blob named many times is still refused, at its first mention.
	missing := cache.FromBytes(cache.SHA256, []byte("never pushed"))
	layers[1500]["digest"] = missing.String()
	body, _ = json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": MediaTypeOCIManifest,
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.String(), "size": len(cfg)},
		"layers": layers,
	})
	resp = tr.pushManifest("team/app", "v2", MediaTypeOCIManifest, body)
	tr.wantError(resp, http.StatusBadRequest, CodeManifestBlobUnknown)
	if !strings.Contains(string(resp.body), missing.String()) {
		t.Errorf("refusal does not name the missing blob: %s", resp.body)
	}
}
