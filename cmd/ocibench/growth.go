package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/caddy-oci/caddy-oci/bench/benchclient"
)

// targetGrowthRSS is the memory issue's bound on the server's peak RSS
// under many clients and as the store grows (MiB).
const targetGrowthRSS = 150

// runGrowth is the store-growth mode (-images): o.clients concurrent
// clients push o.images images across o.images/10 repositories, each a
// layer of o.layer bytes, a config and a manifest of its own, so badger's
// keys and the blob count grow with the store. It reports the rate and the
// server's RSS after the pushes, and saves a heap profile when -pprof is
// set.
func runGrowth(o options) (*Result, error) {
	tmp, err := os.MkdirTemp(o.dir, "ocibench-")
	if err != nil {
		return nil, err
	}
	if !o.keep {
		defer os.RemoveAll(tmp)
	}
	srv, err := startServer(o, tmp)
	if err != nil {
		return nil, err
	}
	defer srv.stop()
	idle, err := memory(srv.cmd.Process.Pid)
	if err != nil {
		return nil, err
	}
	c := benchclient.NewClient(srv.base, o.clients)
	repos := max(1, o.images/10)
	took, err := benchclient.RunConcurrent(o.images, o.clients, func(i int) error {
		return pushImage(c, fmt.Sprintf("grow/r%05d", i%repos), strconv.Itoa(i/repos), uint64(i), o.layer)
	})
	if err != nil {
		return nil, fmt.Errorf("push images: %w", err)
	}
	end, err := memory(srv.cmd.Process.Pid)
	if err != nil {
		return nil, err
	}
	if err := srv.heapProfile(o); err != nil {
		return nil, err
	}
	met := end.HWM <= targetGrowthRSS*mib
	res := &Result{Size: o.layer, Clients: o.clients, Dir: tmp, Images: o.images}
	res.Rows = append(res.Rows,
		Row{Name: fmt.Sprintf("image push (%d clients, %d repos, layer %s)", o.clients, repos, human(o.layer)),
			Value: float64(o.images) / took.Seconds(), Unit: "images/s"},
		Row{Name: "server peak RSS (VmHWM)", Value: float64(end.HWM) / mib, Unit: "MiB",
			Target: fmt.Sprintf("<= %d MiB", targetGrowthRSS), Met: &met},
		memRow("server RSS when ready", idle),
		memRow("server RSS after the pushes", end))
	return res, nil
}

// pushImage pushes one image of its own: a layer of layerSize bytes made
// from seed, a config naming it, and a manifest tagged tag.
func pushImage(c *benchclient.Client, repo, tag string, seed uint64, layerSize int64) error {
	layer := make([]byte, layerSize)
	if _, err := io.ReadFull(benchclient.NewBlob(seed+(5<<32), layerSize), layer); err != nil {
		return err
	}
	ld := digestOf(layer)
	config := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["` + ld + `"]}}`)
	cd := digestOf(config)
	for _, b := range [][]byte{layer, config} {
		if err := c.PushMonolithic(repo, digestOf(b), int64(len(b)), bytes.NewReader(b)); err != nil {
			return err
		}
	}
	m := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":%q,`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":%d}]}`,
		ociManifest, cd, len(config), ld, len(layer))
	return c.PutManifest(repo, "v"+tag, ociManifest, m)
}
