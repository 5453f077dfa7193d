package bench

// The apparatus shared by the benchmarks: sizes from flags or environment,
// a deterministic blob stream, the limits, a registry client speaking just
// enough of the distribution API, and a heap high-water sampler.

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/registry"
)

const mib = 1 << 20

var (
	blobSizeFlag  = flag.String("blobsize", "", "size of the pushed and fetched blob, e.g. 1GiB, 64MiB (default $OCI_BENCH_BLOB_SIZE, else 1GiB)")
	chunkSizeFlag = flag.String("chunksize", "", "PATCH size of the chunked push (default $OCI_BENCH_CHUNK_SIZE, else 64MiB)")
	parallelFlag  = flag.Int("clientsper", 0, "manifest benchmarks: client goroutines per GOMAXPROCS (default $OCI_BENCH_PARALLELISM, else 8)")
)

// setting returns the flag's value, else the environment's, else def.
func setting(flagVal, env, def string) string {
	if flagVal != "" {
		return flagVal
	}
	if v := os.Getenv(env); v != "" {
		return v
	}
	return def
}

func blobSize(b *testing.B) int64 {
	return mustSize(b, setting(*blobSizeFlag, "OCI_BENCH_BLOB_SIZE", "1GiB"))
}

func chunkSize(b *testing.B) int64 {
	return mustSize(b, setting(*chunkSizeFlag, "OCI_BENCH_CHUNK_SIZE", "64MiB"))
}

func parallelism(b *testing.B) int {
	if *parallelFlag > 0 {
		return *parallelFlag
	}
	if v := os.Getenv("OCI_BENCH_PARALLELISM"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("OCI_BENCH_PARALLELISM=%q: want a positive integer", v)
		}
		return n
	}
	return 8
}

func mustSize(b *testing.B, s string) int64 {
	n, err := parseSize(s)
	if err != nil {
		b.Fatal(err)
	}
	return n
}

// parseSize reads "1073741824", "1GiB", "64MiB", "512KiB", "1G", "64M".
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size %q: want a positive number of bytes, optionally with KiB, MiB or GiB", s)
	}
	return n * mult, nil
}

// blob is a deterministic stream of size pseudo-random bytes that costs
// about a memcpy to produce, so the apparatus stays out of the figures: a
// 1 MiB block of splitmix64 output made from the seed, repeated, with the
// first 8 bytes of every block replaced by a hash of (seed, block index)
// so no two blocks are alike. The stream does not depend on how callers
// size their reads, and no blob is ever held in memory.
type blob struct {
	seed  uint64
	off   int64
	size  int64
	block []byte
}

const blockSize = 1 << 20

func newBlob(seed uint64, size int64) *blob {
	block := make([]byte, blockSize)
	for j := range uint64(blockSize / 8) {
		binary.LittleEndian.PutUint64(block[j*8:], mix(seed, j))
	}
	return &blob{seed: seed, size: size, block: block}
}

func mix(seed, j uint64) uint64 {
	z := seed + (j+1)*0x9e3779b97f4a7c15
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

func (r *blob) Read(p []byte) (int, error) {
	if r.off >= r.size {
		return 0, io.EOF
	}
	if rest := r.size - r.off; int64(len(p)) > rest {
		p = p[:rest]
	}
	for n := 0; n < len(p); {
		bi, in := r.off/blockSize, int(r.off%blockSize)
		c := copy(p[n:], r.block[in:])
		if in < 8 {
			var stamp [8]byte
			binary.LittleEndian.PutUint64(stamp[:], mix(^r.seed, uint64(bi)))
			copy(p[n:n+min(c, 8-in)], stamp[in:])
		}
		n += c
		r.off += int64(c)
	}
	return len(p), nil
}

// limitPush is the push limit: sha256 of the blob's bytes while writing
// them to a new file in dir, then fsync — what a registry must at least do
// to commit a blob, without HTTP. The same 1 MiB copy buffer as the store.
// It returns the blob's digest and the time taken; the file is removed.
func limitPush(dir string, seed uint64, size int64) (string, time.Duration, error) {
	buf := make([]byte, mib)
	start := time.Now()
	f, err := os.CreateTemp(dir, "limit-push-*")
	if err != nil {
		return "", 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(io.MultiWriter(f, h), newBlob(seed, size), buf); err != nil {
		return "", 0, err
	}
	if err := f.Sync(); err != nil {
		return "", 0, err
	}
	took := time.Since(start)
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), took, nil
}

// env is one registry under test: a store in a temp dir, the handler behind
// a real HTTP server, and a client with a tuned transport.
type env struct {
	dir   string // same filesystem as the store; the limits write here
	store *cache.Store
	srv   *httptest.Server
	c     *client
}

func newEnv(b *testing.B) *env {
	b.Helper()
	dir := b.TempDir()
	st, err := cache.Open(cache.Options{Dir: filepath.Join(dir, "store")})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	srv := httptest.NewServer(registry.New(registry.Config{Store: st}))
	b.Cleanup(srv.Close)
	return &env{dir: dir, store: st, srv: srv, c: newClient(srv.URL, 64)}
}

// client speaks the few distribution API calls the benchmarks need.
type client struct {
	base string
	hc   *http.Client
}

func newClient(base string, conns int) *client {
	tr := &http.Transport{
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
		WriteBufferSize:     256 << 10,
		ReadBufferSize:      256 << 10,
	}
	return &client{base: base, hc: &http.Client{Transport: tr}}
}

func (c *client) do(method, u string, body io.Reader, size int64, hdr map[string]string, want int) (*http.Response, error) {
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.ContentLength = size
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != want {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return nil, fmt.Errorf("%s %s: status %d, want %d: %s", method, u, resp.StatusCode, want, bytes.TrimSpace(msg))
	}
	return resp, nil
}

// discard reads resp's body to the end and closes it, so the connection
// goes back to the pool.
func discard(resp *http.Response) (int64, error) {
	defer resp.Body.Close()
	return io.Copy(io.Discard, resp.Body)
}

// location resolves an upload's Location header against the server.
func (c *client) location(resp *http.Response) (string, error) {
	loc := resp.Header.Get("Location")
	if loc == "" {
		return "", fmt.Errorf("%s %s: no Location", resp.Request.Method, resp.Request.URL)
	}
	base, err := url.Parse(c.base)
	if err != nil {
		return "", err
	}
	ref, err := url.Parse(loc)
	if err != nil {
		return "", err
	}
	return base.ResolveReference(ref).String(), nil
}

func withQuery(u, k, v string) string {
	sep := "?"
	if strings.Contains(u, "?") {
		sep = "&"
	}
	return u + sep + k + "=" + url.QueryEscape(v)
}

// pushMonolithic is POST /v2/<repo>/blobs/uploads/?digest= with the whole
// blob as the body.
func (c *client) pushMonolithic(repo, digest string, size int64, body io.Reader) error {
	u := withQuery(c.base+"/v2/"+repo+"/blobs/uploads/", "digest", digest)
	resp, err := c.do(http.MethodPost, u, body, size, nil, http.StatusCreated)
	if err != nil {
		return err
	}
	_, err = discard(resp)
	return err
}

// pushChunked is POST, then one PATCH per chunk with Content-Range, then
// PUT ?digest= with no body.
func (c *client) pushChunked(repo, digest string, size, chunk int64, body io.Reader) error {
	resp, err := c.do(http.MethodPost, c.base+"/v2/"+repo+"/blobs/uploads/", nil, 0, nil, http.StatusAccepted)
	if err != nil {
		return err
	}
	discard(resp)
	loc, err := c.location(resp)
	if err != nil {
		return err
	}
	for off := int64(0); off < size; off += chunk {
		n := min(chunk, size-off)
		hdr := map[string]string{"Content-Range": fmt.Sprintf("%d-%d", off, off+n-1)}
		resp, err := c.do(http.MethodPatch, loc, io.LimitReader(body, n), n, hdr, http.StatusAccepted)
		if err != nil {
			return err
		}
		discard(resp)
		if loc, err = c.location(resp); err != nil {
			return err
		}
	}
	resp, err = c.do(http.MethodPut, withQuery(loc, "digest", digest), nil, 0, nil, http.StatusCreated)
	if err != nil {
		return err
	}
	_, err = discard(resp)
	return err
}

// get fetches u and reads the body into io.Discard; it checks the length.
func (c *client) get(u string, hdr map[string]string, size int64) error {
	resp, err := c.do(http.MethodGet, u, nil, 0, hdr, http.StatusOK)
	if err != nil {
		return err
	}
	n, err := discard(resp)
	if err != nil {
		return err
	}
	if size >= 0 && n != size {
		return fmt.Errorf("GET %s: %d bytes, want %d", u, n, size)
	}
	return nil
}

func (c *client) putManifest(repo, ref, mediaType string, m []byte) error {
	req, err := http.NewRequest(http.MethodPut, c.base+"/v2/"+repo+"/manifests/"+ref, bytes.NewReader(m))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", mediaType)
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("PUT manifest %s:%s: status %d: %s", repo, ref, resp.StatusCode, bytes.TrimSpace(msg))
	}
	_, err = io.Copy(io.Discard, resp.Body)
	return err
}

// runConcurrent calls fn(0..n-1) from workers goroutines, as b.RunParallel
// would, and returns the wall time. The limits of the request-rate
// benchmarks run through it with the same concurrency as the real thing.
func runConcurrent(n, workers int, fn func(i int) error) (time.Duration, error) {
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				if err := fn(int(i)); err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	return time.Since(start), firstErr
}

// memPeak samples the Go heap (live and not yet swept objects) every
// millisecond and keeps the high-water mark; it also reports how much
// more memory the runtime took from the OS over the run (MemStats.Sys
// delta). Client, server and limits share the process, so both figures
// bound the server's own use from above.
type memPeak struct {
	stop, done chan struct{}
	peak       uint64
	sys0       uint64
}

const heapObjects = "/memory/classes/heap/objects:bytes"

func startMemPeak() *memPeak {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	m := &memPeak{stop: make(chan struct{}), done: make(chan struct{}), sys0: ms.Sys}
	go func() {
		defer close(m.done)
		s := []metrics.Sample{{Name: heapObjects}}
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(s)
			m.peak = max(m.peak, s[0].Value.Uint64())
			select {
			case <-m.stop:
				return
			case <-t.C:
			}
		}
	}()
	return m
}

func (m *memPeak) report(b *testing.B) {
	close(m.stop)
	<-m.done
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(m.peak)/mib, "peak-heap-MiB")
	var delta uint64
	if ms.Sys > m.sys0 {
		delta = ms.Sys - m.sys0
	}
	b.ReportMetric(float64(delta)/mib, "sys-delta-MiB")
}
