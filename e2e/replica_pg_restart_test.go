package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// pgLoad is what pushers and pullers saw while PostgreSQL restarted.
type pgLoad struct {
	mu       sync.Mutex
	statuses map[string]int // "METHOD status" -> count
	bad      []string       // answers that are neither success nor 503 with Retry-After
	slowest  time.Duration
	acked    map[[2]string]churnImage // {repo, tag} -> image acknowledged 201
	lastOK   atomic.Int64             // unix nanos of the last success
}

func (l *pgLoad) note(method, u string, st int, h http.Header, took time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.statuses[method+" "+strconv.Itoa(st)]++
	l.slowest = max(l.slowest, took)
	switch {
	case st >= 200 && st < 300:
		l.lastOK.Store(time.Now().UnixNano())
	case st == http.StatusServiceUnavailable && h.Get("Retry-After") != "":
	default:
		if len(l.bad) < 10 {
			l.bad = append(l.bad, fmt.Sprintf("%s %s: %d after %s", method, u, st, took.Round(time.Millisecond)))
		}
	}
}

// loadDo is churnDo timed and noted; an answer that takes past the
// client's bound counts as status 0.
func (l *pgLoad) do(method, u string, body []byte, ct string) int {
	start := time.Now()
	st, h := churnDo(method, u, body, ct)
	l.note(method, u, st, h, time.Since(start))
	return st
}

// pushBlobs pushes im's config and layer to repo on r, each whole, and
// reports whether both were answered 201.
func (l *pgLoad) pushBlobs(r *server, repo string, im churnImage) bool {
	for _, b := range [][]byte{im.config, im.layer} {
		if l.do(http.MethodPost, r.url("/v2/"+repo+"/blobs/uploads/?digest="+blobDigest(b)), b, "application/octet-stream") != http.StatusCreated {
			return false
		}
	}
	return true
}

// outage takes a server the replicas need (store, named so in the log)
// down with down while the load runs, starts it again with up 3 s later,
// and waits (30 s at most) for a request to succeed after its return,
// which it returns.
func (l *pgLoad) outage(t *testing.T, store, what string, down, up func() error) time.Time {
	t.Helper()
	time.Sleep(2 * time.Second)
	if err := down(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	back := time.Now()
	if err := up(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for l.lastOK.Load() < back.UnixNano() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: no request succeeded within 30s of %s's return", what, store)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("after %s: first success %s after %s was back", what, time.Duration(l.lastOK.Load()-back.UnixNano()).Round(time.Millisecond), store)
	return back
}

// TestReplicaPostgresRestartUnderLoad restarts PostgreSQL twice, cleanly
// (pg_ctl -m fast) and as a crash (-m immediate), while eight clients
// push images and pull the ones acknowledged, across two replicas with
// GC running. During each outage every answer is a success or 503 with
// Retry-After, none takes past the client's bound; once PostgreSQL is back
// the same replica processes serve again within seconds and GC takes its
// lease again; every manifest answered 201 is there whole afterwards, GC
// passes included.
func TestReplicaPostgresRestartUnderLoad(t *testing.T) {
	needBinary(t)
	c := startCluster(t, 2, drillGC, nil)
	l := &pgLoad{statuses: map[string]int{}, acked: map[[2]string]churnImage{}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				r := c.replicas[(w+n)%2]
				repo := "drill/pgr" + strconv.Itoa(w)
				tag := "t" + strconv.Itoa(n)
				if w%4 == 3 { // pullers
					l.mu.Lock()
					var im churnImage
					var ref [2]string
					for k, v := range l.acked {
						im, ref = v, k
						break
					}
					l.mu.Unlock()
					if ref[0] != "" {
						l.do(http.MethodGet, r.url("/v2/"+ref[0]+"/manifests/"+ref[1]), nil, "")
						l.do(http.MethodGet, r.url("/v2/"+ref[0]+"/blobs/"+blobDigest(im.layer)), nil, "")
					}
					time.Sleep(20 * time.Millisecond)
					continue
				}
				im := newChurnImage(t)
				if !l.pushBlobs(r, repo, im) {
					continue
				}
				if l.do(http.MethodPut, r.url("/v2/"+repo+"/manifests/"+tag), im.manifest, ociManifest) == http.StatusCreated {
					l.mu.Lock()
					l.acked[[2]string{repo, tag}] = im
					l.mu.Unlock()
				}
			}
		}()
	}
	l.outage(t, "PostgreSQL", "pg_ctl stop -m fast", c.pg.Stop, c.pg.Start)
	lastBack := l.outage(t, "PostgreSQL", "pg_ctl stop -m immediate", c.pg.Kill, c.pg.Start)
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()

	l.mu.Lock()
	keys := make([]string, 0, len(l.statuses))
	for k := range l.statuses {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	summary := ""
	for _, k := range keys {
		summary += fmt.Sprintf(" %s:%d", k, l.statuses[k])
	}
	t.Logf("answers:%s; slowest %s; %d manifests acknowledged", summary, l.slowest.Round(time.Millisecond), len(l.acked))
	for _, b := range l.bad {
		t.Errorf("neither success nor 503 with Retry-After: %s", b)
	}
	acked := l.acked
	l.mu.Unlock()
	time.Sleep(5 * time.Second) // GC passes on the recovered cluster
	for ref, im := range acked {
		repo, tag := ref[0], ref[1]
		for _, r := range c.replicas {
			resp := do(t, http.MethodGet, r.url("/v2/"+repo+"/manifests/"+tag), nil, map[string]string{"Accept": ociManifest})
			if got := blobDigest(readAll(t, resp)); resp.StatusCode != http.StatusOK || got != im.digest {
				t.Errorf("acknowledged %s: %s %s, want %s", ref, resp.Status, got, im.digest)
			}
		}
		checkImage(t, c.replicas[0], repo, tag, "after the restarts")
	}
	// GC took its lease again after the crash: some replica collected
	// what the refused pushes left (GC every 2s, grace 15s).
	collected := false
	for _, r := range c.replicas {
		for _, line := range strings.Split(r.out.String(), "\n") {
			var e struct {
				TS  float64 `json:"ts"`
				Msg string  `json:"msg"`
			}
			if json.Unmarshal([]byte(line), &e) == nil && e.Msg == "garbage collected" &&
				time.Unix(0, int64(e.TS*1e9)).After(lastBack) {
				collected = true
			}
		}
	}
	if !collected {
		t.Errorf("no replica collected garbage after PostgreSQL's crash")
	}
	for i, r := range c.replicas {
		select {
		case <-r.done:
			t.Errorf("replica %d exited during the drill", i)
		default:
		}
	}
}
