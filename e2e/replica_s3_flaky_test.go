package e2e

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// flakyS3 is a proxy in front of the S3 server that fails a share of
// requests as S3 does when it is overloaded: 503 SlowDown or 500
// InternalError before the request reaches the server, and 500 after the
// server did the work (a lost answer: the part is stored, the upload
// completed, but the client does not know).
type flakyS3 struct {
	proxy    *httputil.ReverseProxy
	on       atomic.Bool
	mu       sync.Mutex
	injected map[string]int // "op mode" -> count
}

func newFlakyS3(t *testing.T, target string) (*flakyS3, string) {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	f := &flakyS3{proxy: httputil.NewSingleHostReverseProxy(u), injected: map[string]int{}}
	// The request keeps its Host header, which its signature covers.
	return f, "http://" + newLoopback(t, f)
}

// s3Op names the S3 operation of a path-style request.
func s3Op(r *http.Request) string {
	q := r.URL.Query()
	switch {
	case r.Method == http.MethodPut && q.Has("partNumber") && r.Header.Get("X-Amz-Copy-Source") != "":
		return "UploadPartCopy"
	case r.Method == http.MethodPut && q.Has("partNumber"):
		return "UploadPart"
	case r.Method == http.MethodPut && r.Header.Get("X-Amz-Copy-Source") != "":
		return "CopyObject"
	case r.Method == http.MethodPut:
		return "PutObject"
	case r.Method == http.MethodPost && q.Has("uploads"):
		return "CreateMultipartUpload"
	case r.Method == http.MethodPost && q.Has("uploadId"):
		return "CompleteMultipartUpload"
	case r.Method == http.MethodPost && q.Has("delete"):
		return "DeleteObjects"
	case r.Method == http.MethodDelete && q.Has("uploadId"):
		return "AbortMultipartUpload"
	}
	return r.Method
}

func (f *flakyS3) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !f.on.Load() {
		f.proxy.ServeHTTP(w, r)
		return
	}
	op := s3Op(r)
	switch x := rand.IntN(100); {
	case x < 8:
		f.count(op, "503 SlowDown before")
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>`)
	case x < 14:
		f.count(op, "500 before")
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code><Message>We encountered an internal error. Please try again.</Message></Error>`)
	case x < 18 && r.Method != http.MethodGet && r.Method != http.MethodHead:
		// The server does the work; its answer is lost.
		f.count(op, "500 after")
		rec := &discardWriter{h: http.Header{}}
		f.proxy.ServeHTTP(rec, r)
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code><Message>We encountered an internal error. Please try again.</Message></Error>`)
	default:
		f.proxy.ServeHTTP(w, r)
	}
}

func (f *flakyS3) count(op, mode string) {
	f.mu.Lock()
	f.injected[op+" "+mode]++
	f.mu.Unlock()
}

func (f *flakyS3) String() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ks []string
	for k, n := range f.injected {
		ks = append(ks, fmt.Sprintf("%s:%d", k, n))
	}
	sort.Strings(ks)
	return strings.Join(ks, ", ")
}

type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardWriter) WriteHeader(int)             {}

// TestReplicaS3Flaky pushes monolithic, streamed and chunked blobs and
// manifests through two replicas whose S3 fails about one request in six
// (SlowDown, InternalError, and answers lost after the work was done),
// multipart uploads included. Each push either succeeds or answers an
// error the client may retry (503 with Retry-After); what succeeded reads
// back whole (or 503) while S3 still fails, and whole once it is well; what failed is not visible, and pushing it again once S3
// is well succeeds.
func TestReplicaS3Flaky(t *testing.T) {
	needBinary(t)
	srv := s3test.Start(t)
	flaky, endpoint := newFlakyS3(t, srv.Endpoint)
	c := startClusterOnEndpoint(t, srv, pgtest.Start(t), endpoint, 2)
	flaky.on.Store(true)

	type blob struct {
		b       []byte
		chunked bool
		ok      bool
	}
	var blobs []*blob
	statuses := map[string]int{}
	var bad []string
	note := func(what string, resp *http.Response) {
		statuses[fmt.Sprintf("%s %d", what, resp.StatusCode)]++
		switch {
		case resp.StatusCode < 300:
		case resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "":
		default:
			bad = append(bad, fmt.Sprintf("%s: %s %s", what, resp.Status, readAll(t, resp)))
		}
	}
	for i := range 24 {
		r := c.replicas[i%2]
		small := &blob{b: randomBytes(t, 4096)}
		resp := do(t, http.MethodPost, r.url("/v2/flaky/app/blobs/uploads/?digest="+blobDigest(small.b)), small.b,
			map[string]string{"Content-Type": "application/octet-stream"})
		note("monolithic 4 KiB", resp)
		small.ok = resp.StatusCode == http.StatusCreated
		big := &blob{b: randomBytes(t, 6<<20)}
		resp = do(t, http.MethodPost, r.url("/v2/flaky/app/blobs/uploads/?digest="+blobDigest(big.b)), big.b,
			map[string]string{"Content-Type": "application/octet-stream"})
		note("monolithic 6 MiB", resp)
		big.ok = resp.StatusCode == http.StatusCreated
		blobs = append(blobs, small, big)
		if i%3 == 0 {
			ch := &blob{b: randomBytes(t, 13<<20), chunked: true}
			resp = chunkedPush(t, r, "flaky/app", ch.b, 5<<20)
			note("chunked 13 MiB", resp)
			ch.ok = resp.StatusCode == http.StatusCreated
			blobs = append(blobs, ch)
		}
		if small.ok && big.ok {
			m := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}]}`,
				ociManifest, blobDigest(small.b), len(small.b), blobDigest(big.b), len(big.b)))
			resp = do(t, http.MethodPut, r.url(fmt.Sprintf("/v2/flaky/app/manifests/t%d", i)), m, map[string]string{"Content-Type": ociManifest})
			note("manifest", resp)
		}
	}
	// Pulls with S3 still failing: the blob whole, or 503 with
	// Retry-After, never other bytes.
	for _, b := range blobs {
		if !b.ok {
			continue
		}
		resp := do(t, http.MethodGet, c.replicas[0].url("/v2/flaky/app/blobs/"+blobDigest(b.b)), nil, nil)
		got := readAll(t, resp)
		note("pull", resp)
		if resp.StatusCode == http.StatusOK && !bytes.Equal(got, b.b) {
			t.Errorf("pull under faults: %d bytes that differ from the %d pushed", len(got), len(b.b))
		}
	}
	flaky.on.Store(false)
	var ks []string
	for k, n := range statuses {
		ks = append(ks, fmt.Sprintf("%s:%d", k, n))
	}
	sort.Strings(ks)
	t.Logf("answers: %s", strings.Join(ks, ", "))
	t.Logf("faults injected: %s", flaky)
	for _, b := range bad {
		t.Errorf("neither success nor 503 with Retry-After: %s", b)
	}
	failed := 0
	for _, b := range blobs {
		d := blobDigest(b.b)
		for _, r := range c.replicas {
			resp := do(t, http.MethodGet, r.url("/v2/flaky/app/blobs/"+d), nil, nil)
			got := readAll(t, resp)
			switch {
			case b.ok && (resp.StatusCode != http.StatusOK || !bytes.Equal(got, b.b)):
				t.Errorf("acknowledged blob %s (%d bytes): %s, %d bytes", d, len(b.b), resp.Status, len(got))
			case !b.ok && resp.StatusCode == http.StatusOK && !bytes.Equal(got, b.b):
				t.Errorf("refused blob %s is visible with other bytes", d)
			}
		}
		if b.ok {
			continue
		}
		failed++
		// Pushed again, as a client retries.
		var resp *http.Response
		if b.chunked {
			resp = chunkedPush(t, c.replicas[0], "flaky/app", b.b, 5<<20)
		} else {
			resp = do(t, http.MethodPost, c.replicas[1].url("/v2/flaky/app/blobs/uploads/?digest="+d), b.b,
				map[string]string{"Content-Type": "application/octet-stream"})
		}
		if resp.StatusCode != http.StatusCreated {
			t.Errorf("pushing a refused blob again with S3 well: %s %s", resp.Status, readAll(t, resp))
			continue
		}
		getBlob(t, c.replicas[0], "flaky/app", d, b.b)
	}
	t.Logf("%d of %d blob pushes failed under faults; each pushed again", failed, len(blobs))
	objects, uploads := srv.Keys(t, c.bucket, "registry/")
	t.Logf("bucket: %d objects, %d multipart uploads left", len(objects), len(uploads))
}

// startClusterOnEndpoint is startClusterOn with the replicas reaching
// the S3 server at endpoint (a proxy in front of it).
func startClusterOnEndpoint(t *testing.T, srv *s3test.Server, pg *pgtest.Server, endpoint string, n int) *replicaCluster {
	t.Helper()
	bucket := srv.Bucket(t)
	t.Setenv("CADDY_OCI_TEST_S3_KEY", srv.AccessKey)
	t.Setenv("CADDY_OCI_TEST_S3_SECRET", srv.SecretKey)
	t.Setenv("CADDY_OCI_TEST_DATABASE_URL", pg.NewDatabase(t))
	c := &replicaCluster{s3: srv, bucket: bucket, pg: pg}
	for range n {
		site := strings.Replace(replicaSite(srv, bucket, "", ""), "endpoint "+srv.Endpoint, "endpoint "+endpoint, 1)
		c.replicas = append(c.replicas, siteServer(t, "", site, 0))
	}
	return c
}
