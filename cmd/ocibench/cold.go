package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/caddy-oci/caddy-oci/bench/benchclient"
)

// targetColdFirstByte bounds a cold blob's first byte through the mirror,
// as a multiple of the same from upstream directly (issue 14, item 7).
const targetColdFirstByte = 1.5

// runCold is the cold-pull mode (-cold N): distribution (-registry) is the
// upstream on loopback and the built caddy mirrors it under the prefix
// "up". Each of N rounds pushes four images of a -layer blob each to
// upstream, then pulls one straight from upstream and another through
// the mirror, each never asked for before (so the mirror holds neither
// its manifest nor its blob), timing from the manifest GET to the blob's
// first byte and to its last; and, on the two others, the blob GET
// alone. Which way goes first alternates between rounds, and each step
// starts once the previous one's writes are synced (settle). Both paths read
// from the same upstream, whose files are in its page cache, so what
// differs is what the mirror adds: its round trips to upstream and its
// own handling. No token service: upstream is anonymous.
//
// A round's blobs are deleted from both stores once the next round is
// done (the mirror's fill may still be syncing the last one), so a run
// of many rounds of big layers needs the disk space of about three
// rounds, not of all. The figures are per round: the ratio of each
// round's mirror time to its direct time, as the median, the 90th
// percentile and the share of rounds within the target, since one slow
// round (the machine's load) would dominate a mean.
func runCold(o options) (*Result, error) {
	tmp, err := os.MkdirTemp(o.dir, "ocibench-")
	if err != nil {
		return nil, err
	}
	if !o.keep {
		defer os.RemoveAll(tmp)
	}
	up, far, err := startColdUpstream(o, tmp)
	if err != nil {
		return nil, err
	}
	defer up.stop()
	upDir := filepath.Join(tmp, "upstream")
	prefetch := ""
	if o.prefetch {
		prefetch = "\n\t\t\tprefetch"
	}
	o.registryLines = fmt.Sprintf("mirror up {\n\t\t\tupstream %s%s\n\t\t}", far, prefetch)
	srv, err := startServer(o, tmp)
	if err != nil {
		return nil, err
	}
	defer srv.stop()

	c := benchclient.NewClient(up.base, 1)
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	defer hc.CloseIdleConnections()
	// One request each way first, so both start with a connection open
	// (and the mirror with its own to upstream).
	for _, u := range []string{far + "/v2/", srv.base + "/v2/"} {
		if _, _, err := timedGet(hc, u, nil); err != nil {
			return nil, err
		}
	}
	var pull, pullAll, blob, blobAll [2]time.Duration // [direct, mirror]
	var rounds []ColdRound
	var previous []string // the last round's layers, deleted after this one
	for r := range o.cold {
		// Four images a round: pull direct, pull through the mirror,
		// blob direct, blob through the mirror.
		type img struct{ repo, layer string }
		imgs := make([]img, 4)
		for i := range imgs {
			repo := fmt.Sprintf("cold/r%di%d", r, i)
			d, err := pushColdImage(c, repo, uint64(4*r+i)+(7<<32), o.layer)
			if err != nil {
				return nil, fmt.Errorf("push to upstream: %w", err)
			}
			imgs[i] = img{repo, d}
		}
		// Upstream's writes on disk before the clock starts, not
		// written back while either way is timed.
		syscall.Sync()
		var rd ColdRound
		rd.Load = loadAverage()
		for j := range 2 {
			k := (j + r) % 2 // 0 direct, 1 mirror; alternating who goes first
			base := []string{far + "/v2/", srv.base + "/v2/up/"}[k]
			im := imgs[k]
			settle()
			if err := o.wakePath(hc, base, fmt.Sprintf("r%dp%d", r, k)); err != nil {
				return nil, err
			}
			waited, err := srv.upstreamWait(k)
			if err != nil {
				return nil, err
			}
			start := time.Now()
			if _, _, err := timedGet(hc, base+im.repo+"/manifests/v1", map[string]string{"Accept": ociManifest}); err != nil {
				return nil, err
			}
			first, all, err := timedGet(hc, base+im.repo+"/blobs/"+im.layer, nil)
			if err != nil {
				return nil, err
			}
			pf := time.Since(start) - all + first
			pull[k] += pf
			pullAll[k] += time.Since(start)
			if k == 1 && !o.prefetch {
				w, err := srv.upstreamWait(k)
				if err != nil {
					return nil, err
				}
				rd.Own[1] = ms(pf - (w - waited))
			}

			im = imgs[2+k]
			settle()
			if err := o.wakePath(hc, base, fmt.Sprintf("r%db%d", r, k)); err != nil {
				return nil, err
			}
			if waited, err = srv.upstreamWait(k); err != nil {
				return nil, err
			}
			first, all, err = timedGet(hc, base+im.repo+"/blobs/"+im.layer, nil)
			if err != nil {
				return nil, err
			}
			if k == 1 {
				w, err := srv.upstreamWait(k)
				if err != nil {
					return nil, err
				}
				rd.Own[0] = ms(first - (w - waited))
			}
			blob[k] += first
			blobAll[k] += all
			rd.Pull[k], rd.Blob[k] = ms(pf), ms(first)
		}
		rounds = append(rounds, rd)
		for _, d := range previous {
			removeColdBlob(tmp, upDir, d)
		}
		previous = previous[:0]
		for _, im := range imgs {
			previous = append(previous, im.layer)
		}
	}
	n := float64(o.cold)
	row := func(name string, d [2]time.Duration) Row {
		direct, mirror := ms(d[0])/n, ms(d[1])/n
		return Row{Name: name, Value: mirror, Unit: "ms", Limit: direct, Ratio: mirror / direct}
	}
	res := &Result{Size: o.layer, Cold: o.cold, Dir: tmp, Rounds: rounds}
	res.Rows = []Row{
		row("cold blob GET, first byte, mean (mirror; limit: direct)", blob),
		row("cold pull: manifest GET + blob GET to its first byte, mean", pull),
		row("cold blob GET, last byte, mean", blobAll),
		row("cold pull: manifest GET + blob GET to its last byte, mean", pullAll),
	}
	res.Rows = append(res.Rows, ratioRows("cold blob GET, first byte", rounds, func(r ColdRound) [2]float64 { return r.Blob })...)
	res.Rows = append(res.Rows, ratioRows("cold pull to the first byte", rounds, func(r ColdRound) [2]float64 { return r.Pull })...)
	// Upstream's answer time varies between two requests far more than
	// the mirror's own time does: the ratio with the mirror's own share
	// added to the direct path's time is the one where upstream answered
	// both alike.
	res.Rows = append(res.Rows, ownRows("cold blob GET, first byte", rounds, 0)...)
	if !o.prefetch {
		res.Rows = append(res.Rows, ownRows("cold pull to the first byte", rounds, 1)...)
	}
	return res, nil
}

// coldUpstream is the cold modes' upstream: distribution (-registry)
// serving tmp/upstream, and the address the mirror and the direct client
// reach it at (far): through a proxy that puts -upstream-rtt between them
// and it, if set. stop ends both.
type coldUpstream struct {
	*server
	proxy *delayProxy
}

func (u *coldUpstream) stop() {
	if u.proxy != nil {
		u.proxy.close()
	}
	u.server.stop()
}

func startColdUpstream(o options, tmp string) (up *coldUpstream, far string, err error) {
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	cfg := filepath.Join(tmp, "upstream.yml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, distributionConfig, filepath.Join(tmp, "upstream"), port), 0o644); err != nil {
		return nil, "", err
	}
	srv, err := startProcess(exec.Command(o.registry, "serve", cfg), port, filepath.Join(tmp, "upstream.log"))
	if err != nil {
		return nil, "", fmt.Errorf("upstream: %w", err)
	}
	up = &coldUpstream{server: srv}
	far = srv.base
	if o.upstreamRTT > 0 {
		if up.proxy, err = startDelayProxy(strings.TrimPrefix(srv.base, "http://"), o.upstreamRTT); err != nil {
			srv.stop()
			return nil, "", err
		}
		far = "http://" + up.proxy.addr()
	}
	return up, far, nil
}

// wakePath, with -wake, sends one request along the path about to be
// timed: a manifest GET of a name upstream does not have (through the
// mirror, which asks upstream; or straight), so that every process on the
// path has just run. On a virtual machine a process idle for a while
// answers its next request slowly (here: a trivial Go server answers in
// 0.2 ms back to back, 5 ms after 200 ms idle, 25 ms after 2 s), and a
// proxy has one process more to wake than the direct path.
func (o options) wakePath(hc *http.Client, base, name string) error {
	if !o.wake {
		return nil
	}
	req, err := http.NewRequest(http.MethodGet, base+"wake/"+name+"/manifests/v1", nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		return fmt.Errorf("wake-up GET %s: status %d, want 404", req.URL, resp.StatusCode)
	}
	return nil
}

// settle lets the previous step's writes end before the next is timed:
// a mirror's fill syncs its blob after the client's last byte, and a
// step timed back to back would share the disk and the cores with that
// sync on the mirror's side only (or on the direct side only, when it
// comes next). Each step so times one cold pull on a machine at rest,
// as far as this run goes.
func settle() {
	syscall.Sync()
	time.Sleep(200 * time.Millisecond)
}

// ColdRound is one round of the cold mode: milliseconds to the first
// blob byte, [direct, mirror], and the machine's 1-minute load average
// as the round started.
type ColdRound struct {
	Blob [2]float64 `json:"blob_first_byte_ms"`
	Pull [2]float64 `json:"pull_first_byte_ms"`
	// Own is the mirror's own share of its first bytes [blob, pull]:
	// its time less upstream's wait as the mirror measured it
	// (caddy_oci_mirror_upstream_wait_seconds). The pull's is 0 with
	// -prefetch, whose fills of the config overlap the pull.
	Own  [2]float64 `json:"mirror_own_ms"`
	Load float64    `json:"load"`
}

// ratioRows are the distribution over rounds of mirror/direct for one
// figure: median, 90th percentile, and the share of rounds within the
// target, which is what the target is judged on.
func ratioRows(name string, rounds []ColdRound, of func(ColdRound) [2]float64) []Row {
	var ratios []float64
	within := 0
	for _, r := range rounds {
		v := of(r)
		ratios = append(ratios, v[1]/v[0])
		if v[1]/v[0] <= targetColdFirstByte {
			within++
		}
	}
	slices.Sort(ratios)
	pct := func(p float64) float64 { return ratios[int(p*float64(len(ratios)-1)+0.5)] }
	median := pct(0.5)
	met := median <= targetColdFirstByte
	share := float64(within) / float64(len(ratios))
	return []Row{
		{Name: name + ", ratio to direct: median of rounds", Value: median, Unit: "x",
			Target: fmt.Sprintf("<= %.1fx direct", targetColdFirstByte), Met: &met},
		{Name: name + ", ratio to direct: 90th percentile", Value: pct(0.9), Unit: "x"},
		{Name: name + fmt.Sprintf(", rounds within %.1fx", targetColdFirstByte), Value: 100 * share, Unit: "%"},
	}
}

// ownRows are the mirror's own share of one figure (Own[i]: 0 blob, 1
// pull) over rounds, in ms, and the ratio to direct of the direct time
// plus that share: what the mirror costs when upstream answers it as fast
// as it answered the direct client.
func ownRows(name string, rounds []ColdRound, i int) []Row {
	var own []float64
	for _, r := range rounds {
		own = append(own, r.Own[i])
	}
	slices.Sort(own)
	pct := func(p float64) float64 { return own[int(p*float64(len(own)-1)+0.5)] }
	rows := []Row{
		{Name: name + ", the mirror's own time (upstream's wait taken out): median", Value: pct(0.5), Unit: "ms"},
		{Name: name + ", the mirror's own time: 90th percentile", Value: pct(0.9), Unit: "ms"},
	}
	direct := func(r ColdRound) float64 { return [][2]float64{r.Blob, r.Pull}[i][0] }
	return append(rows, ratioRows(name+" with upstream's wait alike on both paths", rounds, func(r ColdRound) [2]float64 {
		return [2]float64{direct(r), direct(r) + r.Own[i]}
	})...)
}

// removeColdBlob deletes a layer from upstream's filesystem and from the
// mirror's store, where nothing asks for it again: the disk space of a
// long run stays that of a few rounds.
func removeColdBlob(tmp, upDir, digest string) {
	h := strings.TrimPrefix(digest, "sha256:")
	os.RemoveAll(filepath.Join(upDir, "docker", "registry", "v2", "blobs", "sha256", h[:2], h))
	os.Remove(blobPath(tmp, digest))
}

// upstreamWait is, for the mirror's path (k 1), the sum of every
// caddy_oci_mirror_upstream_wait_seconds the server reports on its admin
// API: how long upstream took to answer the mirror so far. 0 for the
// direct path.
func (s *server) upstreamWait(k int) (time.Duration, error) {
	if k == 0 {
		return 0, nil
	}
	resp, err := http.Get(s.admin + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s/metrics: %s", s.admin, resp.Status)
	}
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "caddy_oci_mirror_upstream_wait_seconds_sum{") {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("metrics line %q: %w", line, err)
		}
		sum += v
	}
	return time.Duration(sum * float64(time.Second)), sc.Err()
}

// loadAverage is the machine's 1-minute load average (0 if unreadable).
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// timedGet GETs u, expecting 200, and returns the time to the first body
// byte and to the end of the body.
func timedGet(hc *http.Client, u string, hdr map[string]string) (first, all time.Duration, err error) {
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		return 0, 0, err
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	start := time.Now()
	resp, err := hc.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return 0, 0, fmt.Errorf("GET %s: status %d: %s", u, resp.StatusCode, msg)
	}
	var b [1]byte
	if _, err := io.ReadFull(resp.Body, b[:]); err != nil {
		return 0, 0, fmt.Errorf("GET %s: %w", u, err)
	}
	first = time.Since(start)
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return 0, 0, fmt.Errorf("GET %s: %w", u, err)
	}
	return first, time.Since(start), nil
}

// pushColdImage pushes an image of one layer of size bytes made from seed
// under repo:v1 and returns the layer's digest.
func pushColdImage(c *benchclient.Client, repo string, seed uint64, size int64) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, benchclient.NewBlob(seed, size)); err != nil {
		return "", err
	}
	ld := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if err := c.PushPostPut(repo, ld, size, benchclient.NewBlob(seed, size)); err != nil {
		return "", err
	}
	config := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["` + ld + `"]}}`)
	cd := digestOf(config)
	if err := c.PushPostPut(repo, cd, int64(len(config)), bytes.NewReader(config)); err != nil {
		return "", err
	}
	m := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":%q,`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":%d}]}`,
		ociManifest, cd, len(config), ld, size)
	return ld, c.PutManifest(repo, "v1", ociManifest, m)
}
