package registry

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache"
)

// endlessUpstream serves one image whose manifest declares a 1000-byte
// layer, and answers the layer's GET with more than that: the layer then
// junk, or junk only, chunked or with a Content-Length far above 1000,
// up to 256 MiB. sent counts the bytes of blob bodies it got out.
type endlessUpstream struct {
	layer, manifest []byte
	junkOnly        bool
	contentLength   bool // a Content-Length of 256 MiB
	headLength      bool // HEAD answers the layer's true length
	sent            atomic.Int64
}

const endlessLimit = 256 << 20

func newEndlessUpstream(t *testing.T) *endlessUpstream {
	u := &endlessUpstream{layer: make([]byte, 1000)}
	_, _ = rand.Read(u.layer)
	u.manifest = []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":2},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":1000}]}`,
		strings.Repeat("c", 64), digestOf(u.layer)))
	return u
}

func (u *endlessUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/v2/":
	case strings.HasSuffix(r.URL.Path, "/manifests/v1"):
		manifestAnswer{contentType: MediaTypeOCIManifest, body: u.manifest}.serve(w, r)
	case strings.HasSuffix(r.URL.Path, "/blobs/"+digestOf(u.layer)):
		if r.Method == http.MethodHead {
			if u.headLength {
				w.Header().Set("Content-Length", strconv.Itoa(len(u.layer)))
			}
			return
		}
		if u.contentLength {
			w.Header().Set("Content-Length", strconv.Itoa(endlessLimit))
		}
		w.WriteHeader(http.StatusOK)
		junk := make([]byte, 1<<20)
		_, _ = rand.Read(junk)
		if !u.junkOnly {
			k, _ := w.Write(u.layer)
			u.sent.Add(int64(k))
		}
		for u.sent.Load() < endlessLimit-int64(len(junk)) {
			k, err := w.Write(junk)
			u.sent.Add(int64(k))
			if err != nil {
				return
			}
		}
	default:
		http.NotFound(w, r)
	}
}

// TestMirrorFillStopsAtDeclaredSize: an upstream that answers a blob with
// more than the size its manifest declares (an endless chunked body, or a
// Content-Length far above it) makes the mirror write no more than that
// size: the blob is served and kept when its bytes are the blob, nothing
// is kept otherwise, and upstream gets to send only what the connection's
// buffers hold. Before, the fill wrote until the storage reserve (507 for
// every push meanwhile) or the lying length, then failed the digest.
func TestMirrorFillStopsAtDeclaredSize(t *testing.T) {
	const bound = 32 << 20 // socket buffers; far below endlessLimit
	check := func(t *testing.T, u *endlessUpstream, env *mirrorEnv, stored bool) {
		t.Helper()
		d := cache.FromBytes(cache.SHA256, u.layer)
		_, err := env.store.StatBlob(t.Context(), d)
		for wait := time.Now().Add(5 * time.Second); stored && err != nil && time.Now().Before(wait); {
			time.Sleep(10 * time.Millisecond) // the fill commits after its readers had every byte
			_, err = env.store.StatBlob(t.Context(), d)
		}
		if stored != (err == nil) {
			t.Errorf("blob stored: %v, want %v", err == nil, stored)
		}
		deadline := time.Now().Add(10 * time.Second)
		for u.sent.Load() > bound && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := u.sent.Load(); n > bound {
			t.Errorf("upstream sent %d bytes of a 1000-byte blob", n)
		}
	}
	pullManifest := func(env *mirrorEnv) {
		env.wantStatus(env.do(http.MethodGet, "/v2/library/app/manifests/v1", nil, "Accept", MediaTypeOCIManifest), http.StatusOK)
	}
	t.Run("chunked, the blob then junk", func(t *testing.T) {
		u := newEndlessUpstream(t)
		env, _ := newHostileEnv(t, u)
		pullManifest(env)
		resp := env.do(http.MethodGet, "/v2/library/app/blobs/"+digestOf(u.layer), nil)
		env.wantStatus(resp, http.StatusOK)
		if !bytes.Equal(resp.body, u.layer) {
			t.Fatalf("served %d bytes, not the layer", len(resp.body))
		}
		check(t, u, env, true)
	})
	t.Run("chunked, junk only", func(t *testing.T) {
		u := newEndlessUpstream(t)
		u.junkOnly = true
		env, _ := newHostileEnv(t, u)
		pullManifest(env)
		resp, err := env.srv.Client().Get(env.srv.URL + "/v2/library/app/blobs/" + digestOf(u.layer))
		if err == nil {
			b, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && rerr == nil {
				t.Errorf("junk served as the blob: %d bytes", len(b))
			}
		}
		check(t, u, env, false)
	})
	t.Run("Content-Length far above the declared size", func(t *testing.T) {
		u := newEndlessUpstream(t)
		u.contentLength = true
		env, _ := newHostileEnv(t, u)
		pullManifest(env)
		env.wantError(env.do(http.MethodGet, "/v2/library/app/blobs/"+digestOf(u.layer), nil), http.StatusBadGateway, CodeUnknown)
		check(t, u, env, false)
	})
	t.Run("chunked, no manifest served: HEAD's length", func(t *testing.T) {
		u := newEndlessUpstream(t)
		u.headLength = true
		env, _ := newHostileEnv(t, u)
		resp := env.do(http.MethodGet, "/v2/library/app/blobs/"+digestOf(u.layer), nil)
		env.wantStatus(resp, http.StatusOK)
		if !bytes.Equal(resp.body, u.layer) {
			t.Fatalf("served %d bytes, not the layer", len(resp.body))
		}
		check(t, u, env, true)
	})
}
