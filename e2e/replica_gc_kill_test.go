package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// TestReplicaKillMidSweep kills the GC leader with SIGKILL while its
// sweep has blobs marked for deletion, as the other replica pushes
// images made of those very blobs. No acknowledged image loses a blob;
// the survivor takes GC over once the dead leader's lease expires and
// finishes the sweep; pushes meanwhile answer 201 or 503 with
// Retry-After, none hangs past a bound. The survivor's own passes come
// only every hour (the default): the dead leader's marks are finished by
// the pushes that wait on them, once its lease has expired, not an hour
// later.
func TestReplicaKillMidSweep(t *testing.T) { sweepDrill(t, false, false) }

// TestReplicaPausedMidSweep is TestReplicaKillMidSweep with the leader
// stopped (SIGSTOP: a long GC pause, a frozen VM) instead of killed, and
// let go (SIGCONT) once the survivor has finished its marks and pushed
// those blobs again: the old leader, waking with its lease long expired,
// must not go on deleting what it had marked.
func TestReplicaPausedMidSweep(t *testing.T) { sweepDrill(t, true, false) }

// TestReplicaPausedMidSweepTakeover is TestReplicaPausedMidSweep with a
// third replica, started once the leader is stopped, that runs GC every
// second: it takes the GC lease over once the stopped leader's expires,
// finishes or sweeps what it finds (marking and deleting orphans of its
// own) while the pushes go on; then the old leader wakes, its lease and
// marks long stale, in the middle of the new leader's passes.
func TestReplicaPausedMidSweepTakeover(t *testing.T) { sweepDrill(t, true, true) }

func sweepDrill(t *testing.T, pause, takeover bool) {
	needBinary(t)
	srv, pg := s3test.Start(t), pgtest.Start(t)
	bucket := replicaEnv(t, srv, pg)
	// The leader passes every 500ms; the survivor's passes are hourly.
	leader := siteServer(t, "", replicaSite(srv, bucket, "\t\tgc_interval 1s\n\t\tgc_grace 4s\n", ""), 0)
	survivor := siteServer(t, "", replicaSite(srv, bucket, "\t\tgc_interval 1h\n\t\tgc_grace 4s\n", ""), 0)
	db, err := pgx.Connect(context.Background(), os.Getenv("CADDY_OCI_TEST_DATABASE_URL"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	marked := func() int {
		var n int
		if err := db.QueryRow(context.Background(), "SELECT count(*) FROM blobs WHERE deleting IS NOT NULL").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	// Orphans: blobs pushed with no manifest, which GC sweeps once older
	// than the grace.
	orphans := pushOrphans(1200, survivor)

	// Images of orphans, pushed on the survivor throughout.
	type image struct {
		tag      string
		manifest []byte
		blobs    [][]byte
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		acked   []image
		bad     []string
		slowest time.Duration
		n503    atomic.Int64
	)
	stop := make(chan struct{})
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Paced: 4 workers at an image each per 100ms link the 1,200
			// orphans again in 15s at the most, so the ones not reached
			// yet outlive the 4s grace unlinked and the leader's sweep
			// marks them. Unpaced on a quiet machine, the workers linked
			// every orphan within the grace and no sweep ever marked one
			// (the drill then waited for marks in vain).
			pace := time.NewTicker(100 * time.Millisecond)
			defer pace.Stop()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				case <-pace.C:
				}
				cfg, layer := orphans[(w*300+n*2)%len(orphans)], orphans[(w*300+n*2+1)%len(orphans)]
				m := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}]}`,
					ociManifest, blobDigest(cfg), len(cfg), blobDigest(layer), len(layer)))
				ok := true
				for _, step := range []struct {
					method, path, ct string
					body             []byte
				}{
					{http.MethodPost, "/v2/sweep/app/blobs/uploads/?digest=" + blobDigest(cfg), "application/octet-stream", cfg},
					{http.MethodPost, "/v2/sweep/app/blobs/uploads/?digest=" + blobDigest(layer), "application/octet-stream", layer},
					{http.MethodPut, fmt.Sprintf("/v2/sweep/app/manifests/w%d-%d", w, n), ociManifest, m},
				} {
					start := time.Now()
					st, h := churnDo(step.method, survivor.url(step.path), step.body, step.ct)
					took := time.Since(start)
					mu.Lock()
					slowest = max(slowest, took)
					switch {
					case st == http.StatusCreated:
					case st == http.StatusServiceUnavailable && h.Get("Retry-After") != "":
						n503.Add(1)
						ok = false
					default:
						bad = append(bad, fmt.Sprintf("%s %s: %d after %s", step.method, step.path, st, took))
						ok = false
					}
					mu.Unlock()
					if !ok {
						break
					}
				}
				if ok {
					mu.Lock()
					acked = append(acked, image{fmt.Sprintf("w%d-%d", w, n), m, [][]byte{cfg, layer}})
					mu.Unlock()
				}
			}
		}()
	}

	waitFor(t, 60*time.Second, "the leader's sweep to mark blobs", func() bool { return marked() > 0 })
	if pause {
		if err := leader.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = leader.cmd.Process.Signal(syscall.SIGCONT) }()
	} else {
		leader.kill()
	}
	killed := time.Now()
	t.Logf("leader killed or stopped with %d blobs marked", marked())
	var taker *server
	if takeover {
		taker = siteServer(t, "", replicaSite(srv, bucket, "\t\tgc_interval 1s\n\t\tgc_grace 4s\n", ""), 0)
	}
	// The dead leader's lease (30s) expires, then the next push of a
	// marked blob finishes the deletes.
	waitFor(t, 50*time.Second, "the survivor to finish the dead leader's sweep", func() bool { return marked() == 0 })
	t.Logf("marks cleared %s after the fault", time.Since(killed).Round(100*time.Millisecond))
	if pause {
		wake := 8 * time.Second // the survivor's pushes of those blobs
		if takeover {
			wake = 4 * time.Second // and the new leader's passes
		}
		time.Sleep(wake)
		if err := leader.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		t.Logf("leader woken")
	}
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d images acknowledged, %d answers 503, slowest answer %s", len(acked), n503.Load(), slowest.Round(time.Millisecond))
	for _, b := range bad {
		t.Errorf("neither 201 nor 503 with Retry-After: %s", b)
	}
	if slowest > 15*time.Second {
		t.Errorf("a push waited %s for the dead leader's sweep", slowest)
	}
	for _, im := range acked {
		resp := do(t, http.MethodGet, survivor.url("/v2/sweep/app/manifests/"+im.tag), nil, map[string]string{"Accept": ociManifest})
		if got := readAll(t, resp); resp.StatusCode != http.StatusOK || string(got) != string(im.manifest) {
			t.Errorf("acknowledged sweep/app:%s: %s", im.tag, resp.Status)
			continue
		}
		for _, b := range im.blobs {
			getBlob(t, survivor, "sweep/app", blobDigest(b), b)
		}
	}
	switch {
	case taker != nil:
		// Either may have finished the stopped leader's marks; the new
		// leader must have collected since.
		if !strings.Contains(taker.out.String(), "garbage collected") {
			t.Errorf("the third replica never collected: it did not take GC over")
		}
		taker.alive("after the takeover")
		for _, im := range acked {
			for _, b := range im.blobs {
				getBlob(t, taker, "sweep/app", blobDigest(b), b)
			}
		}
	case !strings.Contains(survivor.out.String(), "finished the deletes a GC sweep left marked"):
		t.Errorf("the survivor did not say it finished the dead leader's deletes")
	}
}

// pushOrphans pushes n small blobs into sweep/orphans through r, eight at
// a time, with no manifest: what GC sweeps once they are older than the
// grace. Each push's answer is not checked (a drill may be stopping the
// storage under it); the bytes are returned so the drill can ask later.
func pushOrphans(n int, r *server) [][]byte {
	orphans := make([][]byte, n)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				orphans[i] = []byte(fmt.Sprintf("orphan %d %d", i, time.Now().UnixNano()))
				churnDo(http.MethodPost, r.url("/v2/sweep/orphans/blobs/uploads/?digest="+blobDigest(orphans[i])), orphans[i], "application/octet-stream")
			}
		}()
	}
	wg.Wait()
	return orphans
}
