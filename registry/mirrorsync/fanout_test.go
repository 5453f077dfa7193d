package mirrorsync_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/registry"
	"github.com/caddy-oci/caddy-oci/registry/mirrorsync"
)

// countingSource is the registry's SyncSource, counting the manifests and
// blobs a run asks it for.
type countingSource struct {
	mirrorsync.Source
	manifests, blobs atomic.Int64
}

func (c *countingSource) Manifest(ctx context.Context, repo string, parent registry.SyncManifest, d cache.Digest) (registry.SyncManifest, bool, error) {
	c.manifests.Add(1)
	return c.Source.Manifest(ctx, repo, parent, d)
}

func (c *countingSource) Blob(ctx context.Context, repo string, d cache.Digest) (bool, error) {
	c.blobs.Add(1)
	return c.Source.Blob(ctx, repo, d)
}

// putManifest PUTs body to the upstream's repo under ref (a tag or its
// digest) and returns its descriptor.
func (u *upstreamRegistry) putManifest(repo, ref, mediaType string, body []byte) string {
	u.t.Helper()
	d := cache.FromBytes(cache.SHA256, body).String()
	if ref == "" {
		ref = d
	}
	req, err := http.NewRequest(http.MethodPut, u.push.URL+"/v2/"+repo+"/manifests/"+ref, bytes.NewReader(body))
	if err != nil {
		u.t.Fatal(err)
	}
	req.Header.Set("Content-Type", mediaType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		u.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		u.t.Fatalf("PUT %s: %d", ref, resp.StatusCode)
	}
	return fmt.Sprintf(`{"mediaType":%q,"digest":%q,"size":%d,"platform":{"os":"linux","architecture":"amd64"}}`, mediaType, d, len(body))
}

const ociIndex = "application/vnd.oci.image.index.v1+json"

// pushFanOut writes lib/fan:v1, an index of `levels` nested levels with
// `wide` entries each. With distinct, each entry is a manifest of its own
// (wide^levels images in all); without, each level lists one manifest
// wide times. It returns how many distinct manifests lie below the tag.
func (u *upstreamRegistry) pushFanOut(levels, wide int, distinct bool) int {
	u.t.Helper()
	img, err := random.Image(64, 1)
	if err != nil {
		u.t.Fatal(err)
	}
	if err := remote.Write(u.ref("lib/fan:img"), img); err != nil {
		u.t.Fatal(err)
	}
	raw, err := img.RawManifest()
	if err != nil {
		u.t.Fatal(err)
	}
	mt, err := img.MediaType()
	if err != nil {
		u.t.Fatal(err)
	}
	var children []string
	n := 0
	if distinct {
		// The same config and layer under other annotations: other digests.
		count := 1
		for range levels {
			count *= wide
		}
		for i := range count {
			body := bytes.Replace(raw, []byte(`{`), fmt.Appendf(nil, `{"annotations":{"n":"%d"},`, i), 1)
			children = append(children, u.putManifest("lib/fan", "", string(mt), body))
		}
		n += count
	} else {
		children = []string{u.putManifest("lib/fan", "", string(mt), raw)}
		n++
	}
	for level := range levels {
		var next []string
		groups := len(children) / wide
		if !distinct {
			groups = 1
		}
		for g := range max(groups, 1) {
			entries := make([]string, wide)
			for i := range entries {
				if distinct {
					entries[i] = children[g*wide+i]
				} else {
					entries[i] = children[0]
				}
			}
			body := []byte(`{"schemaVersion":2,"mediaType":"` + ociIndex + `","manifests":[` + strings.Join(entries, ",") + `]}`)
			tag := ""
			if level == levels-1 {
				tag = "v1"
			}
			next = append(next, u.putManifest("lib/fan", tag, ociIndex, body))
		}
		children = next
		if level < levels-1 {
			n += len(next)
		}
	}
	return n
}

// TestSyncIndexFanOut: the walk below one tag visits each digest once,
// and at most maxTagManifests of them. Upstream writes the indexes: four
// levels of 12 entries naming one manifest each were, before, 22,620
// Manifest calls and 41,472 Blob calls for 4 manifests and 2 blobs (the
// built binary spent 20 s of CPU on 20 entries a level; 1,000 entries,
// a 120 KB index, would have kept the run, and every later run of that
// sync, going for ever). Distinct manifests (6 a level, 1,554 in all)
// were all walked, without bound.
func TestSyncIndexFanOut(t *testing.T) {
	t.Run("repeated", func(t *testing.T) {
		up := newUpstream(t)
		n := up.pushFanOut(4, 12, false)
		loc := newLocal(t, up, nil)
		src := &countingSource{Source: loc.h.SyncSource(loc.m)}
		s := newSync(t, src, mirrorsync.Content{Repository: "lib/fan", Tags: "^v1$"})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		st := s.Run(ctx)
		if st.ErrorCount != 0 {
			t.Fatalf("run: %+v", st)
		}
		if got := src.manifests.Load(); got != int64(n) {
			t.Errorf("%d Manifest calls for %d manifests below the tag", got, n)
		}
		if got := src.blobs.Load(); got != 2 {
			t.Errorf("%d Blob calls for 2 blobs", got)
		}
	})
	t.Run("distinct", func(t *testing.T) {
		up := newUpstream(t)
		n := up.pushFanOut(4, 6, true)
		loc := newLocal(t, up, nil)
		src := &countingSource{Source: loc.h.SyncSource(loc.m)}
		s := newSync(t, src, mirrorsync.Content{Repository: "lib/fan", Tags: "^v1$"})
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		st := s.Run(ctx)
		if st.ErrorCount != 1 || len(st.Errors) != 1 || !strings.Contains(st.Errors[0], "more than") {
			t.Errorf("run over %d manifests: %+v, want one error naming the bound", n, st)
		}
		if got := src.manifests.Load(); got > 1024 {
			t.Errorf("%d Manifest calls, want at most 1024", got)
		}
	})
}
