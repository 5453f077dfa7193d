package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/caddy-oci/caddy-oci/bench/benchclient"
)

// targetColdFirstByte bounds a cold blob's first byte through the mirror,
// as a multiple of the same from upstream directly (issue 14, item 7).
const targetColdFirstByte = 1.5

// runCold is the cold-pull mode (-cold N): distribution (-registry) is the
// upstream on loopback, holding 2N images of a -layer blob each; the
// built caddy mirrors it under the prefix "up". For each of N rounds it
// pulls one image straight from upstream and another through the mirror,
// each never asked for before (so the mirror holds neither its manifest
// nor its blob), and times from the manifest GET to the blob's first
// byte and to its last; and, on two more images, the blob GET alone. Both
// paths read from the same upstream, whose files are in its page cache,
// so what differs is what the mirror adds: its round trips to upstream
// and its own handling. No token service: upstream is anonymous.
func runCold(o options) (*Result, error) {
	tmp, err := os.MkdirTemp(o.dir, "ocibench-")
	if err != nil {
		return nil, err
	}
	if !o.keep {
		defer os.RemoveAll(tmp)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	cfg := filepath.Join(tmp, "upstream.yml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, distributionConfig, filepath.Join(tmp, "upstream"), port), 0o644); err != nil {
		return nil, err
	}
	up, err := startProcess(exec.Command(o.registry, "serve", cfg), port, filepath.Join(tmp, "upstream.log"))
	if err != nil {
		return nil, fmt.Errorf("upstream: %w", err)
	}
	defer up.stop()

	// Four images a round: pull direct, pull through the mirror, blob
	// direct, blob through the mirror.
	c := benchclient.NewClient(up.base, 1)
	type img struct{ repo, layer string }
	imgs := make([]img, 4*o.cold)
	for i := range imgs {
		repo := fmt.Sprintf("cold/i%d", i)
		d, err := pushColdImage(c, repo, uint64(i)+(7<<32), o.layer)
		if err != nil {
			return nil, fmt.Errorf("push to upstream: %w", err)
		}
		imgs[i] = img{repo, d}
	}

	o.registryLines = fmt.Sprintf("mirror up {\n\t\t\tupstream %s\n\t\t}", up.base)
	srv, err := startServer(o, tmp)
	if err != nil {
		return nil, err
	}
	defer srv.stop()

	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	defer hc.CloseIdleConnections()
	// One request each way first, so both start with a connection open
	// (and the mirror with its own to upstream).
	for _, u := range []string{up.base + "/v2/", srv.base + "/v2/"} {
		if _, _, err := timedGet(hc, u, nil); err != nil {
			return nil, err
		}
	}
	var pull, pullAll, blob, blobAll [2]time.Duration // [direct, mirror]
	for r := range o.cold {
		for k, base := range []string{up.base + "/v2/", srv.base + "/v2/up/"} {
			im := imgs[4*r+k]
			start := time.Now()
			if _, _, err := timedGet(hc, base+im.repo+"/manifests/v1", map[string]string{"Accept": ociManifest}); err != nil {
				return nil, err
			}
			first, all, err := timedGet(hc, base+im.repo+"/blobs/"+im.layer, nil)
			if err != nil {
				return nil, err
			}
			pull[k] += time.Since(start) - all + first
			pullAll[k] += time.Since(start)

			im = imgs[4*r+2+k]
			first, all, err = timedGet(hc, base+im.repo+"/blobs/"+im.layer, nil)
			if err != nil {
				return nil, err
			}
			blob[k] += first
			blobAll[k] += all
		}
	}
	n := float64(o.cold)
	row := func(name string, d [2]time.Duration, target bool) Row {
		direct, mirror := ms(d[0])/n, ms(d[1])/n
		r := Row{Name: name, Value: mirror, Unit: "ms", Limit: direct, Ratio: mirror / direct}
		if target {
			met := r.Ratio <= targetColdFirstByte
			r.Target, r.Met = fmt.Sprintf("<= %.1fx direct", targetColdFirstByte), &met
		}
		return r
	}
	res := &Result{Size: o.layer, Cold: o.cold, Dir: tmp}
	res.Rows = []Row{
		row("cold blob GET, first byte (mirror; limit: direct)", blob, true),
		row("cold pull: manifest GET + blob GET to its first byte", pull, true),
		row("cold blob GET, last byte", blobAll, false),
		row("cold pull: manifest GET + blob GET to its last byte", pullAll, false),
	}
	return res, nil
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
