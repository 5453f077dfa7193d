package main

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/caddy-oci/caddy-oci/bench/benchclient"
)

// pullParallel is how many blobs the timed client fetches at once, as
// containerd and Docker do by default.
const pullParallel = 3

// runColdImage is the whole-image cold mode (-cold N -cold-image L):
// distribution (-registry) is the upstream, -upstream-rtt away, and two
// built caddies mirror it, one without and one with `prefetch`. Each of
// N rounds pushes three images of L layers of -layer bytes to upstream
// and pulls one each way (straight, through the plain mirror, through
// the prefetching one) the way containerd does: the manifest, then the
// config and the layers, pullParallel at a time, each to its last byte.
// The order of the three ways turns from round to round. What is timed
// is the whole pull; the figures are means over the rounds, each way's
// ratio to the direct pull.
func runColdImage(o options) (*Result, error) {
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
	bases := []string{far + "/v2/"}
	for i, extra := range []string{"", "\n\t\t\tprefetch"} {
		dir := filepath.Join(tmp, fmt.Sprintf("mirror%d", i))
		if err := os.Mkdir(dir, 0o755); err != nil {
			return nil, err
		}
		so := o
		so.registryLines = fmt.Sprintf("mirror up {\n\t\t\tupstream %s%s\n\t\t}", far, extra)
		srv, err := startServer(so, dir)
		if err != nil {
			return nil, err
		}
		defer srv.stop()
		bases = append(bases, srv.base+"/v2/up/")
	}

	c := benchclient.NewClient(up.base, 1)
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2 * pullParallel}}
	defer hc.CloseIdleConnections()
	var total [3]time.Duration // direct, mirror, mirror with prefetch
	for r := range o.cold {
		repos := make([]string, 3)
		for k := range repos {
			repos[k] = fmt.Sprintf("coldimage/r%di%d", r, k)
			if err := pushLayeredImage(c, repos[k], uint64(r*3+k)<<20+(9<<40), o.coldImage, o.layer); err != nil {
				return nil, fmt.Errorf("push to upstream: %w", err)
			}
		}
		for j := range 3 {
			k := (j + r) % 3
			settle()
			if err := o.wakePath(hc, bases[k], fmt.Sprintf("r%dw%d", r, k)); err != nil {
				return nil, err
			}
			took, err := pullImage(hc, bases[k]+repos[k])
			if err != nil {
				return nil, err
			}
			total[k] += took
		}
	}
	n := float64(o.cold)
	direct := ms(total[0]) / n
	row := func(name string, d time.Duration) Row {
		v := ms(d) / n
		return Row{Name: name, Value: v, Unit: "ms", Limit: direct, Ratio: v / direct}
	}
	what := fmt.Sprintf("cold pull of an image of %d layers of %s, %d blobs at a time, mean", o.coldImage, o.layerText, pullParallel)
	return &Result{Size: o.layer, Cold: o.cold, Dir: tmp, Rows: []Row{
		row(what+" (mirror; limit: direct)", total[1]),
		row(what+" (mirror with prefetch; limit: direct)", total[2]),
		{Name: "prefetch: the mirror's pull time with it, as a share of without", Value: ms(total[2]) / ms(total[1]), Unit: "x"},
	}}, nil
}

// pullImage pulls repo:v1 under base as containerd does: the manifest,
// then its config and layers, pullParallel at a time, each read to its
// end; it returns the time the whole pull took.
func pullImage(hc *http.Client, repo string) (time.Duration, error) {
	start := time.Now()
	req, err := http.NewRequest(http.MethodGet, repo+"/manifests/v1", nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Accept", ociManifest)
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s manifest: status %d: %v", repo, resp.StatusCode, err)
	}
	type desc struct{ Digest string }
	var m struct {
		Config desc
		Layers []desc
	}
	if err := json.Unmarshal(body, &m); err != nil {
		return 0, fmt.Errorf("GET %s manifest: %w", repo, err)
	}
	blobs := []string{m.Config.Digest}
	for _, l := range m.Layers {
		blobs = append(blobs, l.Digest)
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
		turns    = make(chan struct{}, pullParallel)
	)
	for _, d := range blobs {
		turns <- struct{}{}
		wg.Go(func() {
			defer func() { <-turns }()
			if _, _, err := timedGet(hc, repo+"/blobs/"+d, nil); err != nil {
				mu.Lock()
				firstErr = cmp.Or(firstErr, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return time.Since(start), firstErr
}

// pushLayeredImage pushes an image of layers layers of size bytes each,
// made from seed, under repo:v1.
func pushLayeredImage(c *benchclient.Client, repo string, seed uint64, layers int, size int64) error {
	var descs, diffIDs []string
	for i := range layers {
		s := seed + uint64(i)
		h := sha256.New()
		if _, err := io.Copy(h, benchclient.NewBlob(s, size)); err != nil {
			return err
		}
		ld := "sha256:" + hex.EncodeToString(h.Sum(nil))
		if err := c.PushPostPut(repo, ld, size, benchclient.NewBlob(s, size)); err != nil {
			return err
		}
		descs = append(descs, fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":%d}`, ld, size))
		diffIDs = append(diffIDs, fmt.Sprintf("%q", ld))
	}
	config := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[` + strings.Join(diffIDs, ",") + `]}}`)
	cd := digestOf(config)
	if err := c.PushPostPut(repo, cd, int64(len(config)), bytes.NewReader(config)); err != nil {
		return err
	}
	m := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":%q,`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[%s]}`,
		ociManifest, cd, len(config), strings.Join(descs, ","))
	return c.PutManifest(repo, "v1", ociManifest, m)
}
