package e2e

// Fault drills of the scaled-out registry (issue 11, item 7): replicas,
// PostgreSQL and S3 killed while real clients push and pull through the
// load balancer. Each shows that nothing acknowledged is lost and that
// the cluster recovers without restarting a replica.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// drillGC is GC as the drills run it: a pass every 2s, so passes overlap
// every kill, and a grace far longer than any push of theirs (a few
// seconds) but short enough that an orphan blob goes within the test.
const drillGC = "\t\tgc_interval 2s\n\t\tgc_grace 15s\n"

// try runs a client command with a deadline; unlike run it may be called
// from any goroutine and returns the error instead of failing the test.
func try(env []string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(cmd.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// retried runs f, and once more after a pause if it failed, as a client
// (or its user) retries; it returns the last error and whether the first
// try failed.
func retried(f func() error) (err error, firstFailed bool) {
	if err = f(); err == nil {
		return nil, false
	}
	time.Sleep(time.Second)
	return f(), true
}

// drillImage is one image of the drill: its layout on disk and digest.
type drillImage struct {
	img    v1.Image
	layout string
	digest string
	ref    string
}

// TestReplicaKillDrill: crane and skopeo push and pull through the load
// balancer while each of three replicas in turn is killed with SIGKILL
// and started again, GC running every 2s. After one client retry no pull
// fails and every pulled image hashes to its digests; at the end every
// acknowledged push is pullable (crane and podman), and GC did run (an
// orphan blob pushed at the start is gone).
func TestReplicaKillDrill(t *testing.T) {
	crane, skopeo := tool(t, "crane"), tool(t, "skopeo")
	c := startCluster(t, 3, drillGC, nil)
	front := c.front

	orphan := bytes.Repeat([]byte("orphan "), 1000)
	orphanDigest := pushBlob(t, front, "drill/orphan", orphan)
	orphanHex := strings.TrimPrefix(orphanDigest, "sha256:")
	key := "registry/blobs/sha256/" + orphanHex[:2] + "/" + orphanHex // the S3 store's layout
	if objects, _ := c.s3.Keys(t, c.bucket, key); len(objects) != 1 {
		t.Fatalf("the orphan blob is not at %s in the bucket: %v", key, objects)
	}

	var (
		mu       sync.Mutex
		acked    []drillImage // pushes the client saw succeed
		pushes   atomic.Int64
		pulls    atomic.Int64
		retries  atomic.Int64
		failures atomic.Int64
	)
	fail := func(format string, args ...any) {
		failures.Add(1)
		t.Errorf(format, args...)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 2 { // pushers: crane (monolithic) and skopeo (chunked)
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				img := ociImage(t)
				d, _ := img.Digest()
				im := drillImage{img: img, layout: writeLayout(t, img), digest: d.String(),
					ref: fmt.Sprintf("%s/drill/w%d:v%d", front.addr, w, i)}
				err, again := retried(func() error {
					if w == 0 {
						_, err := try(nil, crane, "push", "--insecure", im.layout, im.ref)
						return err
					}
					_, err := try(nil, skopeo, "copy", "--dest-tls-verify=false", "oci:"+im.layout, "docker://"+im.ref)
					return err
				})
				if again {
					retries.Add(1)
				}
				if err != nil {
					fail("push %s failed after a retry: %v", im.ref, err)
					continue
				}
				pushes.Add(1)
				mu.Lock()
				acked = append(acked, im)
				mu.Unlock()
			}
		})
	}
	for w := range 2 { // pullers: crane and skopeo, of what was acknowledged
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
				mu.Lock()
				if len(acked) == 0 {
					mu.Unlock()
					continue
				}
				im := acked[i%len(acked)]
				mu.Unlock()
				dir := filepath.Join(t.TempDir(), "pull")
				err, again := retried(func() error {
					if w == 0 {
						_, err := try(nil, crane, "pull", "--insecure", "--format", "oci", im.ref, dir)
						return err
					}
					_, err := try(nil, skopeo, "copy", "--src-tls-verify=false", "docker://"+im.ref, "oci:"+dir+":v1")
					return err
				})
				if again {
					retries.Add(1)
				}
				if err != nil {
					fail("pull %s failed after a retry: %v", im.ref, err)
					continue
				}
				pulls.Add(1)
				if got := layoutDigest(t, dir); got != im.digest {
					fail("pull %s: manifest %s, want %s", im.ref, got, im.digest)
				}
				checkLayout(t, dir, im.img)
			}
		})
	}

	// Each replica in turn: killed while the clients work, down a while
	// (the load balancer routes around it), started again.
	for i, r := range c.replicas {
		time.Sleep(3 * time.Second)
		r.kill()
		t.Logf("replica %d killed (pushes %d, pulls %d so far)", i, pushes.Load(), pulls.Load())
		time.Sleep(3 * time.Second)
		r.start()
	}
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()

	t.Logf("%d pushes and %d pulls acknowledged, %d needed a client retry, %d failed after one",
		pushes.Load(), pulls.Load(), retries.Load(), failures.Load())
	if pushes.Load() < 3 || pulls.Load() < 3 {
		t.Errorf("only %d pushes and %d pulls ran: the drill did not exercise the cluster", pushes.Load(), pulls.Load())
	}
	// Nothing acknowledged is lost: every image pulls, and verifies.
	for _, im := range acked {
		dir := filepath.Join(t.TempDir(), "final")
		if _, err := try(nil, crane, "pull", "--insecure", "--format", "oci", im.ref, dir); err != nil {
			t.Errorf("acknowledged image lost: %v", err)
			continue
		}
		if got := layoutDigest(t, dir); got != im.digest {
			t.Errorf("%s: manifest %s, want %s", im.ref, got, im.digest)
		}
		checkLayout(t, dir, im.img)
	}
	if len(acked) > 0 {
		if got := podmanPull(t, nil, acked[0].ref, "--tls-verify=false"); got != acked[0].digest {
			t.Errorf("podman pulled %s, want %s", got, acked[0].digest)
		}
	}
	// GC ran throughout: the orphan blob outlived its grace and went. A
	// leader killed in the drill holds the GC lease until it expires
	// (30 s), and a loaded machine slows every pass: the wait allows for
	// both, and a failure shows what the replicas said of their GC. The
	// wait watches the bucket, not the registry: a HEAD renews a link
	// older than half the grace period (a client asks before it pushes a
	// manifest), so polling with HEAD kept the orphan alive for ever once
	// the drill outlasted the grace (twice in CI on a loaded machine).
	deadline := time.Now().Add(240 * time.Second)
	for {
		objects, _ := c.s3.Keys(t, c.bucket, key)
		if len(objects) == 0 {
			break
		}
		if time.Now().After(deadline) {
			for i, r := range c.replicas {
				t.Logf("replica %d on GC:\n%s", i, gcLines(r.out.String(), 20))
			}
			t.Fatal("waited 4m0s for GC to collect the orphan blob")
		}
		time.Sleep(time.Second)
	}
	if got := status(http.MethodHead, front.url("/v2/drill/orphan/blobs/"+orphanDigest)); got != http.StatusNotFound {
		t.Errorf("HEAD of the collected orphan blob: %d, want 404", got)
	}
}

// gcLines is the last n lines of a replica's log that speak of GC.
func gcLines(log string, n int) string {
	var keep []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "GC") || strings.Contains(l, "garbage") || strings.Contains(l, "gc") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep[max(0, len(keep)-n):], "\n")
}

// TestReplicaKillMidChunkedPush: a chunked upload whose replica is
// killed mid-PATCH. The blob is not visible (HEAD 404) before the commit;
// the client's retry through another replica resumes from the offset it
// is told (what was acknowledged is kept, the cut chunk is not) and
// commits, and the blob then reads back whole.
func TestReplicaKillMidChunkedPush(t *testing.T) {
	c := startCluster(t, 2, "", nil)
	a, b := c.replicas[0], c.replicas[1]
	const repo = "drill/chunked"
	chunk := 6 << 20
	data := make([]byte, 3*chunk)
	for i := range data {
		data[i] = byte(i*7 + i>>13)
	}
	sum := sha256.Sum256(data)
	digest := "sha256:" + hex.EncodeToString(sum[:])

	resp := do(t, http.MethodPost, a.url("/v2/"+repo+"/blobs/uploads/"), nil, nil)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST upload: %s", resp.Status)
	}
	loc := resp.Header.Get("Location")
	resp = do(t, http.MethodPatch, a.url(uploadPath(t, loc)), data[:chunk],
		map[string]string{"Content-Type": "application/octet-stream", "Content-Range": fmt.Sprintf("0-%d", chunk-1)})
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("PATCH 1: %s", resp.Status)
	}
	loc = resp.Header.Get("Location")

	// The second chunk: half of it sent, then the replica dies.
	pr, pw := io.Pipe()
	req, _ := http.NewRequest(http.MethodPatch, a.url(uploadPath(t, loc)), pr)
	req.ContentLength = int64(chunk)
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Content-Range", fmt.Sprintf("%d-%d", chunk, 2*chunk-1))
	errc := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			err = fmt.Errorf("PATCH answered %s", resp.Status)
		}
		errc <- err
	}()
	if _, err := pw.Write(data[chunk : chunk+chunk/2]); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	a.kill()
	pw.Close()
	t.Logf("PATCH cut by the kill: %v", <-errc)

	// Nothing half-visible, through the front and on the survivor.
	headBlob(t, c.front, repo, digest, http.StatusNotFound, "after the kill, before the commit")
	headBlob(t, b, repo, digest, http.StatusNotFound, "on the survivor before the commit")

	// The client's retry on the survivor: ask where the session stands,
	// send the rest from there. The dead replica's lease on the session
	// may hold it for a while (416 meanwhile); the retry waits it out.
	path := uploadPath(t, loc)
	var offset int
	deadline := time.Now().Add(60 * time.Second)
	for {
		offset = uploadOffset(t, b.url(path))
		if offset != chunk {
			t.Fatalf("session at %d after the kill, want %d (the acknowledged chunk, not a byte of the cut one)", offset, chunk)
		}
		resp = do(t, http.MethodPatch, b.url(path), data[offset:],
			map[string]string{"Content-Type": "application/octet-stream", "Content-Range": fmt.Sprintf("%d-%d", offset, len(data)-1)})
		if resp.StatusCode == http.StatusAccepted {
			break
		}
		if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable || time.Now().After(deadline) {
			t.Fatalf("PATCH rest on the survivor: %s %s", resp.Status, readAll(t, resp))
		}
		time.Sleep(time.Second)
	}
	headBlob(t, c.front, repo, digest, http.StatusNotFound, "before the commit")
	put := uploadPath(t, resp.Header.Get("Location"))
	sep := "?"
	if strings.Contains(put, "?") {
		sep = "&"
	}
	resp = do(t, http.MethodPut, b.url(put+sep+"digest="+url.QueryEscape(digest)), nil, nil)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT commit: %s %s", resp.Status, readAll(t, resp))
	}
	got := do(t, http.MethodGet, c.front.url("/v2/"+repo+"/blobs/"+digest), nil, nil)
	if got.StatusCode != http.StatusOK {
		t.Fatalf("GET after commit: %s", got.Status)
	}
	if body := readAll(t, got); !bytes.Equal(body, data) {
		t.Fatalf("blob reads back %d bytes that differ from the %d pushed", len(body), len(data))
	}
}

// TestReplicaKillMidFill: the replica filling a mirrored blob from a
// slow upstream is killed mid-fill. Its lease expires, and the next
// request, on another replica, fills the blob afresh and gets it whole.
func TestReplicaKillMidFill(t *testing.T) {
	reg := registry.New()
	var slow atomic.Bool
	slow.Store(true)
	var blobGets atomic.Int64
	upstream := newLoopback(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			blobGets.Add(1)
			if slow.Load() {
				// 64 KiB every 100ms: the fill takes a minute, and the
				// kill lands in it.
				reg.ServeHTTP(&slowWriter{ResponseWriter: w, ctx: r.Context()}, r)
				return
			}
		}
		reg.ServeHTTP(w, r)
	}))
	img, err := random.Image(4<<20, 1)
	if err != nil {
		t.Fatal(err)
	}
	upRef, _ := name.ParseReference(upstream+"/library/slow:v1", name.Insecure)
	slow.Store(false)
	if err := remote.Write(upRef, img); err != nil {
		t.Fatal(err)
	}
	slow.Store(true)
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()

	c := startCluster(t, 2, "\t\tmirror docker.io {\n\t\t\tupstream http://"+upstream+"\n\t\t}\n", nil)
	a, b := c.replicas[0], c.replicas[1]
	blobPath := "/v2/docker.io/library/slow/blobs/" + ld.String()
	// The first pull starts the fill on a; a dies in the middle of it.
	go func() {
		resp, err := (&http.Client{Timeout: time.Minute}).Get(a.url(blobPath))
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	waitFor(t, 30*time.Second, "the fill to start upstream", func() bool { return blobGets.Load() > 0 })
	time.Sleep(time.Second)
	a.kill()
	slow.Store(false)
	// (No HEAD here: a mirror answers HEAD of a blob it lacks from
	// upstream, so 200 says nothing of what the dead filler left.)

	// The next request, on b, waits out a's lease (up to its 30s TTL)
	// and finds no blob: it answers 503 UNAVAILABLE with Retry-After (not
	// a 502 that blames upstream), and the client's retry fills the blob
	// afresh on b.
	start := time.Now()
	var body []byte
	var statuses []string
	for attempt := 0; attempt < 2 && body == nil; attempt++ {
		resp, err := (&http.Client{Timeout: 2 * time.Minute}).Get(b.url(blobPath))
		if err != nil {
			t.Fatalf("GET on the survivor: %v", err)
		}
		raw, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		statuses = append(statuses, resp.Status)
		if err == nil && resp.StatusCode == http.StatusOK {
			body = raw
			break
		}
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Errorf("GET on the survivor while the dead filler's lease ran out: %s (Retry-After %q) %s, want 503 with Retry-After",
				resp.Status, resp.Header.Get("Retry-After"), raw)
		}
	}
	if body == nil {
		t.Fatalf("GET on the survivor, with one retry: %v", statuses)
	}
	if got := sha256.Sum256(body); "sha256:"+hex.EncodeToString(got[:]) != ld.String() {
		t.Fatalf("filled blob hashes to %x, want %s", got, ld)
	}
	t.Logf("survivor's answers %v", statuses)
	t.Logf("survivor filled the blob %s after the kill (upstream blob GETs %d)", time.Since(start).Round(time.Second), blobGets.Load())
	headBlob(t, c.front, "docker.io/library/slow", ld.String(), http.StatusOK, "after the survivor's fill")
}

// TestReplicaPostgresDown: PostgreSQL killed while clients push and pull.
// Meanwhile requests that need it answer 503 UNAVAILABLE with
// Retry-After; once it is back the same replica processes (none
// restarted) serve pushes and pulls again.
func TestReplicaPostgresDown(t *testing.T) {
	crane := tool(t, "crane")
	c := startCluster(t, 2, "", nil)
	before := pushImage(t, crane, c.front, "drill/pg:before")

	if err := c.pg.Kill(); err != nil {
		t.Fatal(err)
	}
	checkUnavailable(t, c, "PostgreSQL down")
	if err := c.pg.Start(); err != nil {
		t.Fatal(err)
	}
	checkRecovered(t, c, crane, before, "drill/pg:after")
}

// TestReplicaS3Down: the same with the S3 server killed: 503 UNAVAILABLE
// for what needs bytes, nothing recorded for a push that did not land,
// and recovery when it returns.
func TestReplicaS3Down(t *testing.T) {
	crane := tool(t, "crane")
	c := startCluster(t, 2, "", nil)
	before := pushImage(t, crane, c.front, "drill/s3:before")

	c.s3.Kill()
	// A blob read and a blob push need S3.
	for _, r := range c.replicas {
		resp := do(t, http.MethodGet, r.url("/v2/drill/s3/blobs/"+before.layer), nil, nil)
		wantUnavailable(t, resp, "blob GET with S3 down")
	}
	lost := bytes.Repeat([]byte("never landed "), 100)
	resp := do(t, http.MethodPost, c.front.url("/v2/drill/s3/blobs/uploads/?digest="+blobDigest(lost)), lost,
		map[string]string{"Content-Type": "application/octet-stream"})
	wantUnavailable(t, resp, "monolithic push with S3 down")
	c.s3.Restart(t)
	headBlob(t, c.front, "drill/s3", blobDigest(lost), http.StatusNotFound, "after S3 returned: the failed push left nothing")
	checkRecovered(t, c, crane, before, "drill/s3:after")
}

// pushed is an image a drill pushed with crane.
type pushed struct {
	ref, digest, layer string
}

func pushImage(t *testing.T, crane string, front *server, repoTag string) pushed {
	t.Helper()
	img := ociImage(t)
	d, _ := img.Digest()
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	ref := front.addr + "/" + repoTag
	run(t, nil, crane, "push", "--insecure", writeLayout(t, img), ref)
	return pushed{ref: ref, digest: d.String(), layer: ld.String()}
}

// checkUnavailable: with a backend down, a tag read and an upload start
// answer 503 UNAVAILABLE with Retry-After on every replica.
func checkUnavailable(t *testing.T, c *replicaCluster, when string) {
	t.Helper()
	for _, r := range c.replicas {
		resp := do(t, http.MethodGet, r.url("/v2/drill/pg/manifests/before"), nil,
			map[string]string{"Accept": "application/vnd.oci.image.manifest.v1+json"})
		wantUnavailable(t, resp, "manifest GET with "+when)
		resp = do(t, http.MethodPost, r.url("/v2/drill/pg/blobs/uploads/"), nil, nil)
		wantUnavailable(t, resp, "upload start with "+when)
	}
}

func wantUnavailable(t *testing.T, resp *http.Response, what string) {
	t.Helper()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("%s: %s %s, want 503", what, resp.Status, readAll(t, resp))
	}
	if resp.Header.Get("Retry-After") == "" {
		t.Errorf("%s: 503 without Retry-After", what)
	}
	if code := errorCode(t, resp); code != "UNAVAILABLE" {
		t.Errorf("%s: error code %s, want UNAVAILABLE", what, code)
	}
}

// checkRecovered: once the backend is back, the image pushed before is
// pulled whole and a new push succeeds, through the front, within a short
// while and with the replicas' processes as they were.
func checkRecovered(t *testing.T, c *replicaCluster, crane string, before pushed, repoTag string) {
	t.Helper()
	var out string
	waitFor(t, 30*time.Second, "the image pushed before to pull again", func() bool {
		var err error
		out, err = try(nil, crane, "digest", "--insecure", before.ref)
		return err == nil
	})
	// crane logs its own retries (of the 503s) before the digest.
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if got := lines[len(lines)-1]; got != before.digest {
		t.Errorf("after recovery %s is %s, want %s", before.ref, got, before.digest)
	}
	dir := filepath.Join(t.TempDir(), "pull")
	run(t, nil, crane, "pull", "--insecure", "--format", "oci", before.ref, dir)
	if got := layoutDigest(t, dir); got != before.digest {
		t.Errorf("pulled %s, want %s", got, before.digest)
	}
	after := pushImage(t, crane, c.front, repoTag)
	if got := strings.TrimSpace(run(t, nil, crane, "digest", "--insecure", after.ref)); got != after.digest {
		t.Errorf("pushed after recovery: %s, want %s", got, after.digest)
	}
	for i, r := range c.replicas {
		select {
		case <-r.done:
			t.Errorf("replica %d exited during the drill", i)
		default:
		}
	}
}

// pushBlob pushes b monolithically and returns its digest.
func pushBlob(t *testing.T, s *server, repo string, b []byte) string {
	t.Helper()
	d := blobDigest(b)
	resp := do(t, http.MethodPost, s.url("/v2/"+repo+"/blobs/uploads/?digest="+d), b,
		map[string]string{"Content-Type": "application/octet-stream"})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("push blob: %s %s", resp.Status, readAll(t, resp))
	}
	return d
}

// status answers a request's status code, 0 when it got no answer.
func status(method, u string) int {
	req, _ := http.NewRequest(method, u, nil)
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// waitFor polls ok every 250ms until it holds, failing the test after d.
func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", d, what)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// slowWriter dribbles a response: 64 KiB per 100ms.
type slowWriter struct {
	http.ResponseWriter
	ctx context.Context
}

func (w *slowWriter) Write(p []byte) (int, error) {
	var n int
	for len(p) > 0 {
		k := min(len(p), 64<<10)
		m, err := w.ResponseWriter.Write(p[:k])
		n += m
		if err != nil {
			return n, err
		}
		w.ResponseWriter.(http.Flusher).Flush()
		p = p[k:]
		select {
		case <-w.ctx.Done():
			return n, w.ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return n, nil
}

// uploadPath is the path and query of an upload's Location, to send to
// any replica.
// uploadOffset asks an upload session where it stands (GET of its URL u,
// on a replica that may not be the one that took its chunks) and returns
// the offset of its next byte: one past the end of its Range.
func uploadOffset(t *testing.T, u string) int {
	t.Helper()
	st := do(t, http.MethodGet, u, nil, nil)
	if st.StatusCode != http.StatusNoContent {
		t.Fatalf("GET upload status on the survivor: %s %s", st.Status, readAll(t, st))
	}
	_, end, _ := strings.Cut(st.Header.Get("Range"), "-")
	n, err := strconv.Atoi(end)
	if err != nil {
		t.Fatalf("Range %q", st.Header.Get("Range"))
	}
	return n + 1
}

func uploadPath(t *testing.T, loc string) string {
	t.Helper()
	u, err := url.Parse(loc)
	if err != nil || loc == "" {
		t.Fatalf("Location %q: %v", loc, err)
	}
	return u.RequestURI()
}

// newLoopback serves h on 127.0.0.1 for the test and returns host:port.
func newLoopback(t *testing.T, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// loops are a drill's clients: each runs its function over and over on a
// goroutine of its own until halt.
type loops struct {
	stop chan struct{}
	wg   sync.WaitGroup
}

func newLoops() *loops { return &loops{stop: make(chan struct{})} }

// run calls f(0), f(1), ... until halt.
func (l *loops) run(f func(n int)) {
	l.wg.Go(func() {
		for n := 0; ; n++ {
			select {
			case <-l.stop:
				return
			default:
			}
			f(n)
		}
	})
}

// halt stops every loop after its current call and waits for them.
func (l *loops) halt() {
	close(l.stop)
	l.wg.Wait()
}
