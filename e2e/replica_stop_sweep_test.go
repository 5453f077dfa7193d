//go:build linux

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestReplicaS3StoppedMidSweep and TestReplicaPostgresStoppedMidSweep:
// the S3 server, or PostgreSQL, is stopped (SIGSTOP) for 25 s while a GC
// sweep of two replicas has blobs marked for deletion, and clients push
// images made of those very blobs through both replicas. A client sends
// a request again on 503 (as registries' clients do): none gets anything
// else but 201 (no 500), and once the server continues (SIGCONT) the
// first push is acknowledged within seconds. Every acknowledged image
// is whole afterwards; GC goes on (the orphans nobody linked again are
// swept); and no lease but the passes' own is left held.
//
// Not fixed, and so failing now and then: in 1 of 5 runs with S3
// stopped, an acknowledged image lost a blob (record and bytes; GET
// 404). Likely: the manifest came after the blob's link had aged past
// gc_grace (its push retried through the stop); the registry found the
// link, GC's DropLinks removed it before CreateManifest's transaction,
// whose FOR SHARE then locked no row and committed the reference without
// checking the link was still there; GC then swept the blob.

func TestReplicaS3StoppedMidSweep(t *testing.T) {
	c := startCluster(t, 2, "\t\tgc_interval 1s\n\t\tgc_grace 4s\n", nil)
	stoppedMidSweep(t, c, c.s3.Pause, c.s3.Resume)
}

func TestReplicaPostgresStoppedMidSweep(t *testing.T) {
	c := startCluster(t, 2, "\t\tgc_interval 1s\n\t\tgc_grace 4s\n", nil)
	stoppedMidSweep(t, c, c.pg.Pause, c.pg.Resume)
}

// sweepGrace is the drills' gc_grace.
const sweepGrace = 4 * time.Second

// stallClient waits longer than a replica's bound on a stalled store
// (stallBound): the replica, not the client, is to give up first.
var stallClient = &http.Client{Timeout: stallBound + 15*time.Second}

// pushStep sends one request of a push again on 503 and on a cut, as a
// client does, until deadline; it returns the last status (0: no answer)
// and, for anything but 201 or 503, what came back.
func pushStep(method, u string, body []byte, ct string, deadline time.Time) (int, string) {
	for {
		req, err := http.NewRequest(method, u, bytes.NewReader(body))
		if err != nil {
			return 0, err.Error()
		}
		req.Header.Set("Content-Type", ct)
		st, what := 0, ""
		if resp, err := stallClient.Do(req); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			st, what = resp.StatusCode, string(b)
		} else {
			what = err.Error()
		}
		if st == http.StatusCreated || (st != http.StatusServiceUnavailable && st != 0) || time.Now().After(deadline) {
			return st, what
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func stoppedMidSweep(t *testing.T, c *replicaCluster, stop, cont func() error) {
	a, b := c.replicas[0], c.replicas[1]
	marked := func() int { return pgCount(t, "SELECT count(*) FROM blobs WHERE deleting IS NOT NULL") }

	orphans := pushOrphans(600, a)

	type image struct {
		repo, tag string
		manifest  []byte
		blobs     [][]byte
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		acked []image
		bad   []string
		steps = map[int]int{}
	)
	quit := make(chan struct{})
	push := func(s *server, repo, tag string, blobs [][]byte) bool {
		m := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d},{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}]}`,
			ociManifest, blobDigest(blobs[0]), len(blobs[0]), blobDigest(blobs[1]), len(blobs[1]), blobDigest(blobs[2]), len(blobs[2])))
		deadline := time.Now().Add(90 * time.Second)
		var firstAck time.Time
		for _, step := range []struct {
			method, path, ct string
			body             []byte
		}{
			{http.MethodPost, "/v2/" + repo + "/blobs/uploads/?digest=" + blobDigest(blobs[0]), "application/octet-stream", blobs[0]},
			{http.MethodPost, "/v2/" + repo + "/blobs/uploads/?digest=" + blobDigest(blobs[1]), "application/octet-stream", blobs[1]},
			{http.MethodPost, "/v2/" + repo + "/blobs/uploads/?digest=" + blobDigest(blobs[2]), "application/octet-stream", blobs[2]},
			{http.MethodPut, "/v2/" + repo + "/manifests/" + tag, ociManifest, m},
		} {
			st, what := pushStep(step.method, s.url(step.path), step.body, step.ct, deadline)
			if firstAck.IsZero() {
				firstAck = time.Now()
			}
			if st == http.StatusBadRequest && strings.Contains(what, "MANIFEST_BLOB_UNKNOWN") && time.Since(firstAck) > sweepGrace+time.Second {
				// A blob that waited unreferenced longer than the grace
				// (its push retried through the stop) is garbage by
				// then, as configured: not a loss.
				mu.Lock()
				steps[-1]++
				mu.Unlock()
				return false
			}
			mu.Lock()
			steps[st]++
			if st != http.StatusCreated {
				bad = append(bad, fmt.Sprintf("%s %s: %d %s", step.method, step.path, st, what))
			}
			mu.Unlock()
			if st != http.StatusCreated {
				return false
			}
		}
		mu.Lock()
		acked = append(acked, image{repo, tag, m, blobs})
		mu.Unlock()
		return true
	}
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := c.replicas[w%2]
			// Paced, so that orphans not linked yet outlive the grace
			// and the sweep marks them (see sweepDrill).
			pace := time.NewTicker(150 * time.Millisecond)
			defer pace.Stop()
			for n := 0; ; n++ {
				select {
				case <-quit:
					return
				case <-pace.C:
				}
				shared := [][]byte{orphans[(w*150+n*2)%len(orphans)], orphans[(w*150+n*2+1)%len(orphans)],
					[]byte(fmt.Sprintf("layer of w%d-%d %d", w, n, time.Now().UnixNano()))}
				push(s, "sweep/app", fmt.Sprintf("w%d-%d", w, n), shared)
			}
		}()
	}

	waitFor(t, 60*time.Second, "a sweep to mark blobs", func() bool { return marked() > 0 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	stopped := true
	defer func() {
		if stopped {
			_ = cont()
		}
	}()
	time.Sleep(25 * time.Second)
	if err := cont(); err != nil {
		t.Fatal(err)
	}
	stopped = false
	woken := time.Now()
	if !push(b, "sweep/after", "first", [][]byte{[]byte("after cfg " + woken.String()), []byte("after layer"), orphans[0]}) {
		t.Errorf("the first push after SIGCONT was not acknowledged")
	}
	t.Logf("first push after SIGCONT acknowledged in %s", time.Since(woken).Round(100*time.Millisecond))
	// GC resumes under the same load: the marks the stop left are
	// finished (by the leader's next pass, or by a push waiting on one),
	// within 0.1-4 s. (About 1 run in 10 with PostgreSQL stopped took some
	// 36 s: renewals and Acquires of the "gc" lease sent during the stop
	// ran when PostgreSQL continued, after the replica gave up on them,
	// holding the lease a whole TTL with no pass running; pgmeta's
	// TestLeaseStaleWritesAfterStall. Lease writes are now rolled back
	// when their client is gone.)
	resumed := time.Now()
	for marked() != 0 {
		if time.Since(resumed) > 20*time.Second {
			t.Errorf("marks left by the stopped sweep not finished under load %s after SIGCONT", time.Since(resumed).Round(time.Second))
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("marks finished %s after SIGCONT", time.Since(resumed).Round(100*time.Millisecond))
	close(quit)
	wg.Wait()

	mu.Lock()
	t.Logf("%d images acknowledged; statuses of the last tries: %v", len(acked), steps)
	for _, s := range bad {
		t.Errorf("a push step ended without 201: %s", s)
	}
	// GC goes on: every blob no acknowledged image holds is swept, within
	// a few of its 1 s passes after the 4 s grace (the orphans' links
	// first, then the blobs).
	keep := map[string]bool{}
	for _, im := range acked {
		for _, bl := range im.blobs {
			keep[blobDigest(bl)] = true
		}
	}
	mu.Unlock()
	swept := time.Now()
	for pgCount(t, "SELECT count(*) FROM blobs") != len(keep) || marked() != 0 {
		if time.Since(swept) > 60*time.Second {
			t.Errorf("GC did not sweep what no image holds within 60 s: %d blobs recorded, %d held by images; the others: %s",
				pgCount(t, "SELECT count(*) FROM blobs"), len(keep), pgLeft(t, keep))
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	for _, im := range acked {
		for _, s := range c.replicas {
			resp := do(t, http.MethodGet, s.url("/v2/"+im.repo+"/manifests/"+im.tag), nil, map[string]string{"Accept": ociManifest})
			if got := readAll(t, resp); resp.StatusCode != http.StatusOK || !bytes.Equal(got, im.manifest) {
				t.Errorf("acknowledged %s:%s: %s", im.repo, im.tag, resp.Status)
				continue
			}
			for _, bl := range im.blobs {
				getBlob(t, s, im.repo, blobDigest(bl), bl)
			}
		}
	}
	// Only the passes' own leases may be held now (a leader renews the
	// "gc" lease between passes); a request's lease (an upload, a fill)
	// ended with its request.
	held := func() int {
		return pgCount(t, "SELECT count(*) FROM leases WHERE expires > now() AND key NOT IN ('gc', 'scrub', 'scrub/done', 'mirror-evict')")
	}
	if n := held(); n != 0 {
		t.Errorf("%d leases of requests still held after the pushes ended", n)
	}
	for _, s := range c.replicas {
		s.alive("after the storage was stopped mid-sweep")
		if strings.Contains(s.out.String(), "panic") {
			t.Errorf("a replica logged a panic")
		}
	}
}

// pgLeft describes the recorded blobs not in keep: their times, marks
// and links.
func pgLeft(t *testing.T, keep map[string]bool) string {
	t.Helper()
	db, err := pgx.Connect(context.Background(), os.Getenv("CADDY_OCI_TEST_DATABASE_URL"))
	if err != nil {
		return err.Error()
	}
	defer db.Close(context.Background())
	rows, err := db.Query(context.Background(), `SELECT b.digest, b.created::text, b.touched::text, coalesce(b.deleting::text, ''), now()::text,
		coalesce((SELECT string_agg(l.repo || ' ' || l.linked::text, '; ') FROM blob_links l WHERE l.digest = b.digest), '')
		FROM blobs b`)
	if err != nil {
		return err.Error()
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var d, created, touched, deleting, now, links string
		if err := rows.Scan(&d, &created, &touched, &deleting, &now, &links); err != nil {
			return err.Error()
		}
		if !keep[d] {
			out = append(out, fmt.Sprintf("%s created %s touched %s deleting %q now %s links [%s]", d, created, touched, deleting, now, links))
		}
	}
	return strings.Join(out, "\n")
}
