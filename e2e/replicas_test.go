package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// replicaSite is the oci_registry block of one replica on a shared bucket
// and database, secrets from the environment as an operator writes them.
func replicaSite(srv *s3test.Server, bucket, extra, storageExtra string) string {
	return `	oci_registry {
` + extra + `
		storage s3 {
			bucket ` + bucket + `
			endpoint ` + srv.Endpoint + `
			region ` + srv.Region + `
			prefix registry/
			access_key {env.CADDY_OCI_TEST_S3_KEY}
			secret_key {env.CADDY_OCI_TEST_S3_SECRET}
			path_style
` + storageExtra + `		}
		metadata postgres {env.CADDY_OCI_TEST_DATABASE_URL}
	}`
}

// cluster starts n replicas on one versitygw bucket and one PostgreSQL
// database, and a Caddy in front of them that spreads requests round
// robin, as the README's "Running several replicas" describes. It
// returns the front and the replicas.
func cluster(t *testing.T, n int, extra string) (*server, []*server) {
	t.Helper()
	c := startCluster(t, n, extra, nil)
	return c.front, c.replicas
}

// clusterStorage is cluster with more lines in replica i's storage s3
// block: storageExtra(i).
func clusterStorage(t *testing.T, n int, extra string, storageExtra func(i int) string) (*server, []*server) {
	t.Helper()
	c := startCluster(t, n, extra, storageExtra)
	return c.front, c.replicas
}

// replicaCluster is what startCluster started; the fault drills kill and
// restart its parts.
type replicaCluster struct {
	front    *server
	replicas []*server
	s3       *s3test.Server
	bucket   string
	pg       *pgtest.Server
}

func startCluster(t testing.TB, n int, extra string, storageExtra func(i int) string) *replicaCluster {
	t.Helper()
	needBinary(t)
	return startClusterOn(t, s3test.Start(t), pgtest.Start(t), n, extra, storageExtra)
}

// startClusterOn is startCluster on an S3 server and a PostgreSQL the
// test started.
func startClusterOn(t testing.TB, srv *s3test.Server, pg *pgtest.Server, n int, extra string, storageExtra func(i int) string) *replicaCluster {
	t.Helper()
	bucket := replicaEnv(t, srv, pg)
	c := &replicaCluster{s3: srv, bucket: bucket, pg: pg}
	var upstreams []string
	for i := range n {
		more := ""
		if storageExtra != nil {
			more = storageExtra(i)
		}
		r := siteServer(t, "", replicaSite(srv, bucket, extra, more), 0)
		c.replicas = append(c.replicas, r)
		upstreams = append(upstreams, r.addr)
	}
	c.front = siteServer(t, "", frontSite(upstreams), 0)
	return c
}

// replicaEnv makes a bucket on srv and a database on pg and points
// replicaSite's environment variables at them; it returns the bucket.
func replicaEnv(t testing.TB, srv *s3test.Server, pg *pgtest.Server) string {
	t.Helper()
	bucket := srv.Bucket(t)
	t.Setenv("CADDY_OCI_TEST_S3_KEY", srv.AccessKey)
	t.Setenv("CADDY_OCI_TEST_S3_SECRET", srv.SecretKey)
	t.Setenv("CADDY_OCI_TEST_DATABASE_URL", pg.NewDatabase(t))
	return bucket
}

// frontSite is the load balancer of the README's "Running several
// replicas": round robin; a replica that refuses connections (killed,
// restarting) is skipped for fail_duration, and a request that found no
// replica to connect to is tried again on the others for up to
// lb_try_duration, so clients do not see a replica's death unless it
// dies while it answers them. A GET or HEAD that a replica's death cut
// short is tried again on another (lb_retry_match; Caddy retries only
// GET by default); any other request so cut reaches the client as the
// cut connection it is (handle_errors 502 abort), which containers/image
// (skopeo, podman) retries, where it gives up on a bodiless 502. No
// unhealthy_status and no active health check on /v2/: while PostgreSQL
// or S3 is down every replica answers 503 with Retry-After, and marking
// them all unhealthy would replace that answer with the proxy's own.
func frontSite(upstreams []string) string {
	return `	reverse_proxy ` + strings.Join(upstreams, " ") + ` {
		lb_policy round_robin
		lb_try_duration 10s
		lb_try_interval 250ms
		lb_retry_match {
			method GET HEAD
		}
		fail_duration 5s
		flush_interval -1
	}
	handle_errors 502 {
		abort
	}`
}

// TestConformanceReplicas runs the whole conformance suite against three
// replicas on S3 and PostgreSQL behind a round-robin load balancer: every
// request of a push, chunked or not, may land on another replica.
func TestConformanceReplicas(t *testing.T) {
	bin := conformanceBin(t)
	// sparse_manifests: the suite's sparse data (OCI_DATA_SPARSE) pushes
	// image manifests without a layer.
	front, _ := cluster(t, 3, "\t\tsparse_manifests\n")
	runConformance(t, bin, front.addr, "conformance-replicas.txt")
}

// TestConformanceReplicasRedirect is TestConformanceReplicas with
// redirect: every blob GET the registry authorises answers 307 to a
// presigned URL on versitygw, which the suite follows (Range included).
func TestConformanceReplicasRedirect(t *testing.T) {
	bin := conformanceBin(t)
	front, _ := clusterStorage(t, 3, "\t\tsparse_manifests\n", func(int) string { return "\t\t\tredirect 1m\n" })
	// The suite passes without a redirect too: see that it gets them.
	c := []byte("redirected blob")
	sum := sha256.Sum256(c)
	d := "sha256:" + hex.EncodeToString(sum[:])
	resp, err := http.Post("http://"+front.addr+"/v2/probe/blobs/uploads/?digest="+d, "application/octet-stream", bytes.NewReader(c))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err = noFollow.Get("http://" + front.addr + "/v2/probe/blobs/" + d)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTemporaryRedirect || !strings.Contains(resp.Header.Get("Location"), "X-Amz-Signature=") {
		t.Fatalf("blob GET through the load balancer: %s, Location %q; want a 307 to a presigned URL", resp.Status, resp.Header.Get("Location"))
	}
	// The optional check that a blob GET's final answer carries
	// Docker-Content-Digest is off: that answer is S3's, which cannot
	// send the header (the 307 carries it). Everything the issue's
	// acceptance names stays on.
	runConformance(t, bin, front.addr, "conformance-replicas-redirect.txt", "OCI_API_BLOBS_DIGEST_HEADER=false")
}

// TestConformanceReplicasCache is TestConformanceReplicas with a read
// cache of its own on each replica.
func TestConformanceReplicasCache(t *testing.T) {
	bin := conformanceBin(t)
	dir := t.TempDir()
	front, _ := clusterStorage(t, 3, "\t\tsparse_manifests\n", func(i int) string {
		return fmt.Sprintf("\t\t\tcache %s/replica-%d 1GiB\n", dir, i)
	})
	runConformance(t, bin, front.addr, "conformance-replicas-cache.txt")
}

// TestMirrorReplicas: eight concurrent cold pulls of one image through
// three replicas behind the load balancer fetch each blob from upstream
// once (upstream bytes / layer bytes = 1.00), and every pull gets the
// image. (The pulls read the manifest and the layers, not the config.)
func TestMirrorReplicas(t *testing.T) {
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	var blobGets, blobBytes atomic.Int64
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			blobGets.Add(1)
			cw := &countingWriter{ResponseWriter: w}
			reg.ServeHTTP(cw, r)
			blobBytes.Add(cw.n)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	defer upstream.Close()
	img, err := random.Image(4<<20, 3)
	if err != nil {
		t.Fatal(err)
	}
	upRef, _ := name.ParseReference(strings.TrimPrefix(upstream.URL, "http://")+"/library/app:v1", name.Insecure)
	if err := remote.Write(upRef, img); err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	var size int64
	layers, _ := img.Layers()
	for _, l := range layers {
		n, _ := l.Size()
		size += n
	}

	front, _ := cluster(t, 3, `		mirror docker.io {
			upstream `+upstream.URL+`
		}`)
	ref, _ := name.ParseReference(front.addr+"/docker.io/library/app:v1", name.Insecure)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			got, err := remote.Image(ref)
			if err != nil {
				t.Errorf("pull %d: %v", i, err)
				return
			}
			if d, _ := got.Digest(); d != want {
				t.Errorf("pull %d: %s, want %s", i, d, want)
			}
			ls, _ := got.Layers()
			for _, l := range ls {
				rc, err := l.Compressed()
				if err != nil {
					t.Errorf("pull %d: layer: %v", i, err)
					return
				}
				if _, err := io.Copy(io.Discard, rc); err != nil {
					t.Errorf("pull %d: layer bytes: %v", i, err)
				}
				if err := rc.Close(); err != nil {
					t.Errorf("pull %d: layer does not verify: %v", i, err)
				}
			}
		})
	}
	wg.Wait()
	t.Logf("upstream blob GETs %d, bytes %d for layers of %d bytes: ratio %.2f",
		blobGets.Load(), blobBytes.Load(), size, float64(blobBytes.Load())/float64(size))
	if blobBytes.Load() != size || blobGets.Load() != 3 {
		t.Errorf("upstream sent %d bytes in %d blob GETs for 3 layers of %d bytes: want each once",
			blobBytes.Load(), blobGets.Load(), size)
	}
}

type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}
