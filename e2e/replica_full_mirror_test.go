//go:build linux

package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/internal/tmpfs"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// fillUpstream serves blob (with its length, or chunked under a
// repository named .../chunked) at any blob path, a quarter MiB every few
// milliseconds, so that readers on several replicas join a fill while it
// runs.
func fillUpstream(t *testing.T, blob []byte) *httptest.Server {
	t.Helper()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/blobs/") {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Docker-Content-Digest", blobDigest(blob))
		if !strings.Contains(r.URL.Path, "/chunked/") {
			w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
		}
		w.WriteHeader(http.StatusOK)
		for off := 0; off < len(blob) && r.Method == http.MethodGet; off += 256 << 10 {
			if _, err := w.Write(blob[off:min(off+256<<10, len(blob))]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			time.Sleep(5 * time.Millisecond)
		}
	}))
	t.Cleanup(up.Close)
	return up
}

// coldReaders GETs u from each of servers, readers times each, at once,
// and reports what each got: a whole blob (200 with digest d), 507
// STORAGE_FULL, a cut (the client knows it failed), or anything else as
// an error of the test.
func coldReaders(t *testing.T, servers []*server, path, d string, readers int) map[string]int {
	t.Helper()
	return coldReadersAnswering(t, servers, path, d, readers, false)
}

// coldReadersFull is coldReaders where 503 UNAVAILABLE with Retry-After
// is an answer too: the database full is not always told apart from the
// database failing.
func coldReadersFull(t *testing.T, servers []*server, path, d string, readers int) map[string]int {
	t.Helper()
	return coldReadersAnswering(t, servers, path, d, readers, true)
}

func coldReadersAnswering(t *testing.T, servers []*server, path, d string, readers int, unavailable bool) map[string]int {
	t.Helper()
	var (
		mu  sync.Mutex
		got = map[string]int{}
		wg  sync.WaitGroup
	)
	for si, s := range servers {
		for i := range readers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				time.Sleep(time.Duration(i) * 40 * time.Millisecond)
				what := ""
				resp, err := (&http.Client{Timeout: 2 * time.Minute}).Get(s.url(path))
				if err != nil {
					what = "cut before the headers"
				} else {
					b, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					switch {
					case err != nil:
						what = "cut mid-body"
					case resp.StatusCode == http.StatusOK && blobDigest(b) == d:
						what = "200 whole"
					case resp.StatusCode == http.StatusOK:
						t.Errorf("replica %d reader %d: 200 with %d bytes that are not the blob", si, i, len(b))
					case resp.StatusCode == http.StatusInsufficientStorage && strings.Contains(string(b), "STORAGE_FULL"):
						what = "507"
					case unavailable && resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "":
						what = "503 " + strings.TrimSpace(string(b))
					default:
						t.Errorf("replica %d reader %d: %s %q, want the blob, 507 STORAGE_FULL or a cut", si, i, resp.Status, b)
					}
				}
				mu.Lock()
				got[what]++
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	return got
}

// TestReplicaS3FullMirrorFill: two replicas mirror upstream into a bucket
// whose folder (versitygw's posix backend on a 64 MiB tmpfs) is full, and
// three clients on each pull the same cold 12 MiB blob at once, with
// upstream sending its length and without. Each client gets the whole
// blob passed through, 507 STORAGE_FULL or a cut connection, never a 500
// nor bytes that are not the blob; nothing of the blob is left in the
// bucket (objects nor multipart uploads) nor in the database; and once
// space is freed the same processes fill it and serve it whole, through
// both replicas (no fill lease or record left poisoned by the failure).
func TestReplicaS3FullMirrorFill(t *testing.T) {
	needBinary(t)
	dir := tmpfs.Mount(t, 64<<20)
	srv := s3test.StartIn(t, dir)
	blob := randomBytes(t, 12<<20)
	d := blobDigest(blob)
	up := fillUpstream(t, blob)
	c := startClusterOn(t, srv, pgtest.Start(t), 2, `		mirror docker.io {
			upstream `+up.URL+`
		}`, nil)

	filler := tmpfs.FillTo(t, dir, 512<<10)
	hex := strings.TrimPrefix(d, "sha256:")
	for _, repo := range []string{"library/sized", "library/chunked"} {
		path := "/v2/docker.io/" + repo + "/blobs/" + d
		got := coldReaders(t, c.replicas, path, d, 3)
		t.Logf("%s with the bucket full: %v", repo, got)
		for _, r := range c.replicas {
			r.alive("after a fill into a full bucket")
		}
		objects, uploads := srv.Keys(t, c.bucket, "registry/")
		for _, o := range append(objects, uploads...) {
			if strings.Contains(o, hex) {
				t.Errorf("the failed fill left %s in the bucket", o)
			}
		}
		if n := pgCount(t, "SELECT count(*) FROM blobs WHERE digest = $1", d); n != 0 {
			t.Errorf("the failed fill left the blob recorded in the database")
		}
		if n := pgCount(t, "SELECT count(*) FROM leases WHERE key = $1 AND expires > now()", "fill/"+d); n != 0 {
			t.Errorf("the failed fill left its lease held")
		}
		// Again, after the first round's fills have ended: a fill that
		// failed must not leave the digest held or half recorded.
		got = coldReaders(t, c.replicas[:1], path, d, 1)
		t.Logf("%s again with the bucket full: %v", repo, got)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	for _, repo := range []string{"library/sized", "library/chunked"} {
		for i, r := range c.replicas {
			resp := do(t, http.MethodGet, r.url("/v2/docker.io/"+repo+"/blobs/"+d), nil, nil)
			if b := readAll(t, resp); resp.StatusCode != http.StatusOK || blobDigest(b) != d {
				t.Errorf("%s through replica %d after freeing space: %s, %d bytes", repo, i, resp.Status, len(b))
			}
		}
	}
	// The blob is in the bucket now, whole, as a filled blob is.
	objects, _ := srv.Keys(t, c.bucket, "registry/blobs/sha256/"+hex[:2]+"/"+hex)
	if len(objects) != 1 {
		t.Errorf("after freeing space the bucket holds %v for the blob", objects)
	}
	for _, r := range c.replicas {
		r.alive(fmt.Sprintf("after freeing space (%s)", d[:15]))
	}
}

// pgCount runs a count query on the replicas' database (as replicaEnv
// set it) and returns its answer.
func pgCount(t *testing.T, query string, args ...any) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := pgx.Connect(ctx, os.Getenv("CADDY_OCI_TEST_DATABASE_URL"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	var n int
	if err := db.QueryRow(ctx, query, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
