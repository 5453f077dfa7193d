package front

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/registry"
)

// BenchmarkPull pulls one whole image (manifest, config, 4 layers of
// 16 MiB) from a registry on disk three ways in the same run: straight
// from the backend, through a bare reverse proxy, and through the front
// and the same reverse proxy (as Caddy runs oci_front before
// reverse_proxy). It reports each as MB/s and the ratios of the front to
// the other two; the front's own target is front/direct >= 0.9.
func BenchmarkPull(b *testing.B) { benchPull(b, pullMode{parallel: 1}) }

// BenchmarkClientPull is BenchmarkPull as a real client pulls: three
// layers at once (containerd's default), each hashed and written to a
// file and its digest checked, as containerd, skopeo and crane do before
// they keep a blob. This is the speed a user sees.
func BenchmarkClientPull(b *testing.B) {
	benchPull(b, pullMode{parallel: 3, dir: b.TempDir()})
}

// pullMode is how pullImage fetches blobs.
type pullMode struct {
	parallel int    // blobs fetched at once
	dir      string // if set: blobs are hashed, written here and verified
}

func benchPull(b *testing.B, mode pullMode) {
	store, err := cache.Open(cache.Options{Dir: b.TempDir(), Logger: zap.NewNop()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = store.Close() })
	be := httptest.NewServer(registry.New(registry.Config{Store: store}))
	b.Cleanup(be.Close)
	img, err := random.Image(16<<20, 4)
	if err != nil {
		b.Fatal(err)
	}
	ref, _ := name.ParseReference(strings.TrimPrefix(be.URL, "http://")+"/docker.io/library/big:v1", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		b.Fatal(err)
	}

	f, err := New(Config{Namespaces: []authscope.Namespace{{Prefix: "docker.io", Default: true}}})
	if err != nil {
		b.Fatal(err)
	}
	proxy := httptest.NewServer(bigBuffers(proxyTo(b, be.URL)))
	b.Cleanup(proxy.Close)
	fs := httptest.NewServer(f.Middleware(bigBuffers(proxyTo(b, be.URL))))
	b.Cleanup(fs.Close)

	client := &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	ways := []struct {
		name, base string
		took       time.Duration
	}{
		{"direct", be.URL + "/v2/docker.io/library/big", 0},
		{"proxy", proxy.URL + "/v2/docker.io/library/big", 0},
		{"front", fs.URL + "/v2/big", 0},
	}
	size := pullImage(b, client, ways[0].base, mode)
	b.SetBytes(size * int64(len(ways)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := range ways {
			// Rotate the order, so no way always runs on a warm cache.
			w := &ways[(i+j)%len(ways)]
			start := time.Now()
			if got := pullImage(b, client, w.base, mode); got != size {
				b.Fatalf("%s pulled %d bytes, want %d", w.name, got, size)
			}
			w.took += time.Since(start)
		}
	}
	b.StopTimer()
	mbps := map[string]float64{}
	for _, w := range ways {
		mbps[w.name] = float64(size) * float64(b.N) / w.took.Seconds() / 1e6
		b.ReportMetric(mbps[w.name], w.name+"-MB/s")
	}
	b.ReportMetric(mbps["front"]/mbps["direct"], "front/direct")
	b.ReportMetric(mbps["front"]/mbps["proxy"], "front/proxy")
}

// pullImage fetches the manifest under base (/v2/<name>) and every blob
// it names, as a client pulling the image does, and returns the bytes
// read.
func pullImage(b *testing.B, c *http.Client, base string, mode pullMode) int64 {
	get := func(path, accept string) (io.ReadCloser, error) {
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := c.Do(req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return nil, fmt.Errorf("GET %s: %d", path, resp.StatusCode)
		}
		return resp.Body, nil
	}
	body, err := get("/manifests/v1", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json")
	if err != nil {
		b.Fatal(err)
	}
	raw, err := io.ReadAll(body)
	body.Close()
	if err != nil {
		b.Fatal(err)
	}
	var m struct {
		Config struct{ Digest string }
		Layers []struct{ Digest string }
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		b.Fatal(err)
	}
	digests := []string{m.Config.Digest}
	for _, l := range m.Layers {
		digests = append(digests, l.Digest)
	}
	var (
		n    atomic.Int64
		wg   sync.WaitGroup
		errs = make(chan error, len(digests))
		sem  = make(chan struct{}, mode.parallel)
	)
	n.Add(int64(len(raw)))
	for _, d := range digests {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			body, err := get("/blobs/"+d, "")
			if err != nil {
				errs <- err
				return
			}
			defer body.Close()
			k, err := keepBlob(body, d, mode.dir)
			if err != nil {
				errs <- err
				return
			}
			n.Add(k)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	return n.Load()
}

// keepBlob reads a blob as a client keeps it: with dir, hashed while
// written to a file there, then checked against its digest and removed;
// without, thrown away.
func keepBlob(r io.Reader, digest, dir string) (int64, error) {
	if dir == "" {
		return io.Copy(io.Discard, r)
	}
	f, err := os.CreateTemp(dir, "blob")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), r)
	if err != nil {
		return n, err
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != digest {
		return n, fmt.Errorf("blob %s hashes to %s", digest, got)
	}
	return n, f.Sync()
}

// bigBuffers gives the reverse proxy 1 MiB copy buffers, as Caddy's
// `stream_buffer_size 1MiB` does: on loopback the extra hop is bound by
// system calls per buffer, not by the network.
func bigBuffers(h http.Handler) http.Handler {
	if rp, ok := h.(*httputil.ReverseProxy); ok {
		rp.BufferPool = &bufferPool{}
	}
	return h
}

type bufferPool struct{ p sync.Pool }

func (bp *bufferPool) Get() []byte {
	if b, ok := bp.p.Get().(*[]byte); ok {
		return *b
	}
	return make([]byte, 1<<20)
}

func (bp *bufferPool) Put(b []byte) { bp.p.Put(&b) }
