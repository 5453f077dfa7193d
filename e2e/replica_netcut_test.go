//go:build linux

package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// netcutTally counts the answers of a drill by kind, and keeps the
// unexpected ones.
type netcutTally struct {
	mu      sync.Mutex
	answers map[string]int
	bad     []string
	slowest time.Duration
	// slowestWhat is the slowest request and its answer.
	slowestWhat string
	// fullOK: 507 STORAGE_FULL is a refusal the drill expects.
	fullOK bool
}

func (n *netcutTally) add(kind string, took time.Duration, what string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.answers[kind]++
	if took > n.slowest {
		n.slowest, n.slowestWhat = took, what+": "+kind
	}
}

func (n *netcutTally) wrong(format string, args ...any) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.bad = append(n.bad, fmt.Sprintf(format, args...))
}

func (n *netcutTally) String() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var ks []string
	for k, v := range n.answers {
		ks = append(ks, fmt.Sprintf("%s:%d", k, v))
	}
	sort.Strings(ks)
	return strings.Join(ks, " ")
}

// netcutClient gives up well after the registry's own bounds (5 s for
// PostgreSQL, 30 s for S3): an answer slower than that is a hang.
var netcutClient = &http.Client{Timeout: 50 * time.Second}

// send does one request of the drill and sorts its answer: the wanted
// status, or 503 with Retry-After (the registry could not reach its
// storage), or, for a GET whose headers went out, a transfer broken
// mid-body. Anything else is wrong. It returns whether the wanted
// status came, and the body.
func (n *netcutTally) send(method, u string, body []byte, hdr map[string]string, want int) (bool, *http.Response, []byte) {
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		n.wrong("%s %s: %v", method, u, err)
		return false, nil, nil
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	start := time.Now()
	resp, err := netcutClient.Do(req)
	if err != nil {
		n.add("no answer", time.Since(start), method+" "+u)
		n.wrong("%s %s: no answer after %s: %v", method, u, time.Since(start).Round(time.Millisecond), err)
		return false, nil, nil
	}
	b, rerr := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(start)
	switch {
	case rerr != nil && method == http.MethodGet && resp.StatusCode == http.StatusOK:
		n.add("200 cut", took, method+" "+u)
		return false, resp, nil
	case rerr != nil:
		n.add("broken", took, method+" "+u)
		n.wrong("%s %s: %s, body broken: %v", method, u, resp.Status, rerr)
		return false, resp, nil
	case resp.StatusCode == want:
		n.add(fmt.Sprint(want), took, method+" "+u)
		return true, resp, b
	case resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "":
		n.add("503", took, method+" "+u)
		return false, resp, b
	case n.fullOK && resp.StatusCode == http.StatusInsufficientStorage && bytes.Contains(b, []byte("STORAGE_FULL")):
		n.add("507", took, method+" "+u)
		return false, resp, b
	}
	n.add(fmt.Sprint(resp.StatusCode), took, method+" "+u)
	n.wrong("%s %s: %s %s (want %d, or 503 with Retry-After)", method, u, resp.Status, b, want)
	return false, resp, b
}

// netcutLedger is what the drill pushed: acknowledged and refused.
type netcutLedger struct {
	mu        sync.Mutex
	blobs     map[string]netcutBlob // acknowledged, by digest
	refused   map[string]netcutBlob // refused, by digest
	images    map[string]churnImage
	refusedIm map[string]churnImage // by repo:tag
}

// netcutBlob is a blob pushed and the repository it was pushed to.
type netcutBlob struct {
	repo string
	data []byte
}

// check reads through r every image and blob l holds: each acknowledged
// one must be whole, each refused one absent or whole (its answer lost on
// the way back), never half-visible. It returns how many refused images
// and blobs are there whole. The caller holds l.mu.
func (l *netcutLedger) check(t *testing.T, r *server, when string) (images, blobs int) {
	t.Helper()
	for ref, im := range l.images {
		repo, tag, _ := strings.Cut(ref, ":")
		resp := do(t, http.MethodGet, r.url("/v2/"+repo+"/manifests/"+tag), nil, map[string]string{"Accept": ociManifest})
		if got := readAll(t, resp); resp.StatusCode != http.StatusOK || !bytes.Equal(got, im.manifest) {
			t.Errorf("acknowledged %s: %s, %d bytes", ref, resp.Status, len(got))
		}
		checkImage(t, r, repo, tag, when)
	}
	for ref, im := range l.refusedIm {
		repo, tag, _ := strings.Cut(ref, ":")
		resp := do(t, http.MethodGet, r.url("/v2/"+repo+"/manifests/"+tag), nil, map[string]string{"Accept": ociManifest})
		switch got := readAll(t, resp); {
		case resp.StatusCode == http.StatusNotFound:
		case resp.StatusCode == http.StatusOK && bytes.Equal(got, im.manifest):
			images++
			checkImage(t, r, repo, tag, "a refused tag found")
		default:
			t.Errorf("refused %s: %s, %d bytes", ref, resp.Status, len(got))
		}
	}
	for d, b := range l.blobs {
		if !blobIn(t, r, b.repo, d, b.data) {
			t.Errorf("acknowledged blob %s (%d bytes) lost", d, len(b.data))
		}
	}
	for d, b := range l.refused {
		if _, acked := l.blobs[d]; !acked && blobIn(t, r, b.repo, d, b.data) {
			blobs++
		}
	}
	return images, blobs
}

func (l *netcutLedger) blob(repo string, b []byte, acked bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if acked {
		l.blobs[blobDigest(b)] = netcutBlob{repo, b}
	} else {
		l.refused[blobDigest(b)] = netcutBlob{repo, b}
	}
}

// TestReplicaNetworkCuts: two replicas reach PostgreSQL and S3 through
// TCP proxies that reset connections (a random one every 50 ms, and each
// after a random number of bytes: mid-query, mid-body) while clients push
// images, monolithic and chunked blobs and pull them back. Every answer is
// the wanted one or 503 with Retry-After (or a blob GET broken after its
// headers: a GET from S3 cut mid-body is resumed up to three times, so
// 0-2 in 2,000 now, 14-26 before), none hangs; nothing acknowledged is
// lost; nothing refused is half-visible; and once the network is well the
// same processes serve at once.
func TestReplicaNetworkCuts(t *testing.T) {
	needBinary(t)
	srv, pg := s3test.Start(t), pgtest.Start(t)
	s3Host := strings.TrimPrefix(srv.Endpoint, "http://")
	s3Proxy := newCutProxy(t, s3Host, 6<<20)
	dsn := pg.NewDatabase(t)
	pgURL, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	pgProxy := newCutProxy(t, pgURL.Host, 256<<10)
	pgURL.Host = pgProxy.addr()

	up := newUpstream(t)
	// Mirrored blobs, each pulled cold through both replicas at once
	// while the cuts go on.
	var mirrored []string
	mirroredBytes := map[string][]byte{}
	for i := range 120 {
		b := randomBytes(t, 256<<10+i)
		d := upstreamBlob(t, up, "library/cut", b)
		mirrored = append(mirrored, d)
		mirroredBytes[d] = b
	}
	bucket := srv.Bucket(t)
	t.Setenv("CADDY_OCI_TEST_S3_KEY", srv.AccessKey)
	t.Setenv("CADDY_OCI_TEST_S3_SECRET", srv.SecretKey)
	t.Setenv("CADDY_OCI_TEST_DATABASE_URL", pgURL.String())
	var replicas []*server
	for range 2 {
		site := strings.Replace(replicaSite(srv, bucket, "\t\tmirror docker.io {\n\t\t\tupstream "+up.URL+"\n\t\t}\n", ""),
			"endpoint "+srv.Endpoint, "endpoint http://"+s3Proxy.addr(), 1)
		replicas = append(replicas, siteServer(t, "", site, 0))
	}
	baseFDs, baseG := fdCount(t, replicas[0]), goroutines(t, replicas[0])

	tally := &netcutTally{answers: map[string]int{}}
	ledger := &netcutLedger{blobs: map[string]netcutBlob{}, refused: map[string]netcutBlob{},
		images: map[string]churnImage{}, refusedIm: map[string]churnImage{}}
	stop := make(chan struct{})
	s3Proxy.start(50*time.Millisecond, stop)
	pgProxy.start(50*time.Millisecond, stop)
	var wg sync.WaitGroup
	var rounds atomic.Int64
	worker := func(w int, f func(r *server, i int)) {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				f(replicas[(w+i)%len(replicas)], i)
				rounds.Add(1)
			}
		})
	}
	for w := range 2 { // images: blobs, then the manifest under a tag
		worker(w, func(r *server, i int) {
			im := newChurnImage(t)
			repo, tag := fmt.Sprintf("cut/img%d", w), fmt.Sprintf("v%d", i)
			ok := true
			for _, b := range [][]byte{im.config, im.layer} {
				acked, _, _ := tally.send(http.MethodPost, r.url("/v2/"+repo+"/blobs/uploads/?digest="+blobDigest(b)), b,
					map[string]string{"Content-Type": "application/octet-stream"}, http.StatusCreated)
				ledger.blob(repo, b, acked)
				ok = ok && acked
			}
			if !ok {
				return
			}
			acked, _, _ := tally.send(http.MethodPut, r.url("/v2/"+repo+"/manifests/"+tag), im.manifest,
				map[string]string{"Content-Type": ociManifest}, http.StatusCreated)
			ledger.mu.Lock()
			if acked {
				ledger.images[repo+":"+tag] = im
			} else {
				ledger.refusedIm[repo+":"+tag] = im
			}
			ledger.mu.Unlock()
		})
	}
	worker(0, func(r *server, i int) { // big monolithic (streamed) and chunked blobs
		b := randomBytes(t, 3<<20+i)
		if i%2 == 0 {
			acked, _, _ := tally.send(http.MethodPost, r.url("/v2/cut/big/blobs/uploads/?digest="+blobDigest(b)), b,
				map[string]string{"Content-Type": "application/octet-stream"}, http.StatusCreated)
			ledger.blob("cut/big", b, acked)
			return
		}
		ledger.blob("cut/big", b, netcutChunked(tally, r, "cut/big", b, 1<<20))
	})
	worker(1, func(r *server, i int) { // pulls of what was acknowledged
		ledger.mu.Lock()
		var d string
		var b netcutBlob
		for d, b = range ledger.blobs {
			break
		}
		ledger.mu.Unlock()
		if b.data == nil {
			time.Sleep(50 * time.Millisecond)
			return
		}
		ok, _, got := tally.send(http.MethodGet, r.url("/v2/"+b.repo+"/blobs/"+d), nil, nil, http.StatusOK)
		if ok && !bytes.Equal(got, b.data) {
			tally.wrong("GET %s: 200 with %d bytes hashing to %s", d, len(got), blobDigest(got))
		}
	})

	var cold atomic.Int64
	for w := range 2 { // cold mirror pulls, the same blob on both replicas
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				i := int(cold.Add(1)) - 1
				if i >= 2*len(mirrored) {
					time.Sleep(50 * time.Millisecond)
					continue
				}
				d := mirrored[i/2]
				ok, _, got := tally.send(http.MethodGet, replicas[w].url("/v2/docker.io/library/cut/blobs/"+d), nil, nil, http.StatusOK)
				if ok && !bytes.Equal(got, mirroredBytes[d]) {
					tally.wrong("mirror GET %s: 200 with %d bytes hashing to %s", d, len(got), blobDigest(got))
				}
			}
		})
	}

	time.Sleep(20 * time.Second)
	close(stop)
	wg.Wait()
	cutAt := time.Now()
	t.Logf("under cuts: %d rounds; answers %s; slowest %s (%s); connections cut: PostgreSQL %d, S3 %d",
		rounds.Load(), tally, tally.slowest.Round(time.Millisecond), tally.slowestWhat, pgProxy.cuts.Load(), s3Proxy.cuts.Load())
	for _, b := range tally.bad {
		t.Error(b)
	}
	if tally.slowest > 10*time.Second {
		t.Errorf("slowest answer %s (%s): a request waited on a cut connection", tally.slowest, tally.slowestWhat)
	}

	// Recovery: the first push and pull after the cuts succeed on each
	// replica, without a restart.
	for i, r := range replicas {
		b := randomBytes(t, 1<<20)
		var took time.Duration
		waitFor(t, 30*time.Second, "a push after the cuts", func() bool {
			start := time.Now()
			resp := do(t, http.MethodPost, r.url("/v2/cut/after/blobs/uploads/?digest="+blobDigest(b)), b,
				map[string]string{"Content-Type": "application/octet-stream"})
			took = time.Since(start)
			return resp.StatusCode == http.StatusCreated
		})
		getBlob(t, r, "cut/after", blobDigest(b), b)
		t.Logf("replica %d: push after the cuts took %s (%s after they stopped)", i, took.Round(time.Millisecond), time.Since(cutAt).Round(time.Millisecond))
	}

	// Nothing acknowledged lost; nothing refused half-visible.
	ledger.mu.Lock()
	defer ledger.mu.Unlock()
	r := replicas[0]
	visible, refusedVisible := ledger.check(t, r, "after the cuts")
	t.Logf("%d images and %d blobs acknowledged, all whole; refused: %d images (%d stored whole, answer lost), %d blobs (%d stored whole)",
		len(ledger.images), len(ledger.blobs), len(ledger.refusedIm), visible, len(ledger.refused), refusedVisible)
	if len(ledger.images) < 5 || len(ledger.blobs) < 10 {
		t.Errorf("only %d images and %d blobs acknowledged under the cuts: the drill did not exercise the replicas", len(ledger.images), len(ledger.blobs))
	}
	waitFor(t, 30*time.Second, "the cut requests' goroutines and fds to go", func() bool {
		return fdCount(t, r) <= baseFDs+20 && goroutines(t, r) <= baseG+40
	})
	t.Logf("replica 0: fds %d (before %d), goroutines %d (before %d)", fdCount(t, r), baseFDs, goroutines(t, r), baseG)
	for _, r := range replicas {
		r.alive("after the network cuts")
	}
}

// blobIn says whether blob d is stored in repo whole; a blob found with
// other bytes fails the test.
func blobIn(t *testing.T, s *server, repo, d string, want []byte) bool {
	t.Helper()
	resp := do(t, http.MethodGet, s.url("/v2/"+repo+"/blobs/"+d), nil, nil)
	got := readAll(t, resp)
	if resp.StatusCode == http.StatusNotFound {
		return false
	}
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, want) {
		t.Errorf("blob %s in %s: %s, %d bytes hashing to %s (want %d bytes)", d, repo, resp.Status, len(got), blobDigest(got), len(want))
	}
	return true
}

// netcutChunked pushes b in PATCHes of chunk bytes and a closing PUT,
// giving up at the first refusal (the drill counts it refused).
func netcutChunked(n *netcutTally, s *server, repo string, b []byte, chunk int) bool {
	ok, resp, _ := n.send(http.MethodPost, s.url("/v2/"+repo+"/blobs/uploads/"), nil, nil, http.StatusAccepted)
	if !ok {
		return false
	}
	loc := resp.Header.Get("Location")
	for off := 0; off < len(b); off += chunk {
		end := min(off+chunk, len(b))
		ok, resp, _ = n.send(http.MethodPatch, s.url(netcutPath(loc)), b[off:end], map[string]string{
			"Content-Type":  "application/octet-stream",
			"Content-Range": fmt.Sprintf("%d-%d", off, end-1),
		}, http.StatusAccepted)
		if !ok {
			return false
		}
		loc = resp.Header.Get("Location")
	}
	u := netcutPath(loc)
	sep := "?"
	if strings.Contains(u, "?") {
		sep = "&"
	}
	ok, _, _ = n.send(http.MethodPut, s.url(u+sep+"digest="+url.QueryEscape(blobDigest(b))), nil, nil, http.StatusCreated)
	return ok
}

// netcutPath is the path and query of an upload's Location.
func netcutPath(loc string) string {
	u, err := url.Parse(loc)
	if err != nil {
		return loc
	}
	return u.RequestURI()
}
