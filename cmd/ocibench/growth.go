package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"syscall"
	"time"

	"github.com/caddy-oci/caddy-oci/bench/benchclient"
	"github.com/caddy-oci/caddy-oci/cache"
)

// Targets of the reliability issue (14) for a grown store.
const (
	// targetGrowthRSS bounds the server's peak RSS under many clients and
	// as the store grows (MiB).
	targetGrowthRSS = 150
	// targetGCPass bounds a collection after 1% of the images changed.
	targetGCPass = time.Second
	// gcChanged: one image in this many is deleted before the timed
	// incremental pass (1%).
	gcChanged = 100
)

// image is one image pushed: its repository and manifest digest.
type image struct{ repo, manifest string }

// runGrowth is the store-growth mode (-images): o.clients concurrent
// clients push o.images images across o.images/10 repositories, each a
// layer of o.layer bytes, a config and a manifest of its own, so badger's
// keys and the blob count grow with the store. On the grown store it
// measures the manifest PUT and GET rates, reads the server's RSS, and
// times a full collection and one after 1% of the images were deleted.
// With -registry it does the same with distribution, one server after the
// other, so both sets of figures come from one run.
func runGrowth(o options) (*Result, error) {
	tmp, err := os.MkdirTemp(o.dir, "ocibench-")
	if err != nil {
		return nil, err
	}
	if !o.keep {
		defer os.RemoveAll(tmp)
	}
	res := &Result{Size: o.layer, Clients: o.clients, Dir: tmp, Images: o.images}
	if o.gcStore != "" {
		rows, err := measureGC(o, o.gcStore, grownImages(o))
		res.Rows = rows
		return res, err
	}
	rows, err := growCaddy(o, tmp)
	if err != nil {
		return nil, err
	}
	res.Rows = rows
	if o.registry != "" {
		rows, err := growDistribution(o, tmp)
		if err != nil {
			return nil, fmt.Errorf("distribution: %w", err)
		}
		for _, r := range rows {
			r.Name = "distribution: " + r.Name
			res.Rows = append(res.Rows, r)
		}
	}
	return res, nil
}

// growCaddy runs the growth figures against the built caddy.
func growCaddy(o options, tmp string) ([]Row, error) {
	srv, err := startServer(o, tmp)
	if err != nil {
		return nil, err
	}
	defer srv.stop()
	rows, images, err := grow(o, srv, (*benchclient.Client).PushMonolithic)
	if err != nil {
		return nil, err
	}
	if err := srv.heapProfile(o); err != nil {
		return nil, err
	}
	srv.stop()
	gc, err := measureGC(o, filepath.Join(tmp, "store"), images)
	if err != nil {
		return nil, err
	}
	return append(rows, gc...), nil
}

// pushFunc pushes one blob whose bytes are in body.
type pushFunc func(c *benchclient.Client, repo, digest string, size int64, body io.Reader) error

// grow pushes the images, each blob with push, measures the manifest
// rates on the grown store and reads the server's memory.
func grow(o options, srv *server, push pushFunc) ([]Row, []image, error) {
	idle, err := memory(srv.cmd.Process.Pid)
	if err != nil {
		return nil, nil, err
	}
	stopPeak := srv.peakHeapProfiles(o)
	defer stopPeak()
	sampled := sampleMemory(srv.cmd.Process.Pid)
	c := benchclient.NewClient(srv.base, o.clients)
	repos := max(1, o.images/10)
	images := make([]image, o.images)
	took, err := benchclient.RunConcurrent(o.images, o.clients, func(i int) error {
		repo := fmt.Sprintf("grow/r%05d", i%repos)
		d, err := pushImage(c, push, repo, strconv.Itoa(i/repos), uint64(i), o.layer)
		images[i] = image{repo, d}
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("push images: %w", err)
	}
	pushed, err := memory(srv.cmd.Process.Pid)
	if err != nil {
		return nil, nil, err
	}
	manifests, err := measureManifests(o, c)
	if err != nil {
		return nil, nil, err
	}
	end, err := memory(srv.cmd.Process.Pid)
	if err != nil {
		return nil, nil, err
	}
	peak, peakAnon := sampled()
	met := end.HWM <= targetGrowthRSS*mib
	rows := []Row{
		{Name: fmt.Sprintf("image push (%d clients, %d repos, layer %s)", o.clients, repos, human(o.layer)),
			Value: float64(o.images) / took.Seconds(), Unit: "images/s"},
	}
	rows = append(rows, manifests...)
	rows = append(rows,
		Row{Name: "server peak RSS (VmHWM)", Value: float64(end.HWM) / mib, Unit: "MiB",
			Target: fmt.Sprintf("<= %d MiB", targetGrowthRSS), Met: &met},
		memRow("server peak RSS sampled every 50 ms", peak),
		memRow("server peak anonymous RSS sampled", peakAnon),
		memRow("server RSS when ready", idle),
		memRow("server RSS after the pushes", pushed),
		memRow("server RSS at the end", end))
	return rows, images, nil
}

// measureGC opens the store the server left (it must have exited) and
// times a full collection, then one after deleting every gcChanged-th
// image, which the incremental collection should find from its
// candidates alone. The deletes go through the store, as the API's do.
func measureGC(o options, dir string, images []image) ([]Row, error) {
	st, err := cache.Open(cache.Options{Dir: dir, GCGrace: time.Millisecond})
	if err != nil {
		return nil, fmt.Errorf("open the store for GC: %w", err)
	}
	defer st.Close()
	time.Sleep(5 * time.Millisecond) // everything is older than the grace
	start := time.Now()
	full, err := st.GC()
	fullTook := time.Since(start)
	if err != nil {
		return nil, fmt.Errorf("full GC: %w", err)
	}
	if o.gcSnapshot != "" {
		// Closed, so badger's files are whole; reopened as before.
		if err := st.Close(); err != nil {
			return nil, err
		}
		if out, err := exec.Command("cp", "-a", dir, o.gcSnapshot).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("snapshot the store: %w: %s", err, out)
		}
		if st, err = cache.Open(cache.Options{Dir: dir, GCGrace: time.Millisecond}); err != nil {
			return nil, fmt.Errorf("reopen the store for GC: %w", err)
		}
		defer st.Close()
	}
	deleted := 0
	for i := 0; i < len(images); i += gcChanged {
		d, err := cache.ParseDigest(images[i].manifest)
		if err != nil {
			return nil, err
		}
		if err := st.DeleteManifest(context.Background(), images[i].repo, d); err != nil {
			return nil, fmt.Errorf("delete %s@%s: %w", images[i].repo, d, err)
		}
		deleted++
	}
	time.Sleep(5 * time.Millisecond)
	if o.pprofDir != "" {
		// This process is the one collecting: its own CPU profile.
		f, err := os.Create(filepath.Join(o.pprofDir, "gc-incremental.pprof"))
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, err
		}
	}
	start, cpu0 := time.Now(), cpuTime()
	incr, err := st.GC()
	incrTook, incrCPU := time.Since(start), cpuTime()-cpu0
	if o.pprofDir != "" {
		pprof.StopCPUProfile()
	}
	if err != nil {
		return nil, fmt.Errorf("GC after deletes: %w", err)
	}
	if incr.BlobsRemoved < 2*deleted {
		// Each deleted image had a layer and a config of its own.
		return nil, fmt.Errorf("GC after %d deletes removed %d blobs, want >= %d: %+v", deleted, incr.BlobsRemoved, 2*deleted, incr)
	}
	met := incrTook < targetGCPass
	return []Row{
		{Name: fmt.Sprintf("GC pass, full=%t (%d repos, %d blobs examined)", full.Full, full.ReposExamined, full.BlobsExamined),
			Value: ms(fullTook), Unit: "ms"},
		{Name: fmt.Sprintf("GC pass after %d images deleted, full=%t (%d repos, %d blobs examined, %d removed; CPU %.0f ms)",
			deleted, incr.Full, incr.ReposExamined, incr.BlobsExamined, incr.BlobsRemoved, ms(incrCPU)),
			Value: ms(incrTook), Unit: "ms", Limit: ms(targetGCPass), Ratio: ms(incrTook) / ms(targetGCPass),
			Target: "< 1000 ms", Met: &met},
	}, nil
}

// distributionConfig is a distribution (v3) configuration as its example
// config ships (filesystem storage, in-memory blob descriptor cache) with
// deletes enabled, so a collection has something to do.
const distributionConfig = `version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:%d
`

// growDistribution runs the growth figures against distribution, deletes
// the same 1% of images through its API and times its collection
// (`registry garbage-collect`, offline and always over the whole store).
func growDistribution(o options, tmp string) ([]Row, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(tmp, "distribution")
	cfg := filepath.Join(tmp, "distribution.yml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, distributionConfig, dir, port), 0o644); err != nil {
		return nil, err
	}
	srv, err := startProcess(exec.Command(o.registry, "serve", cfg), port, filepath.Join(tmp, "distribution.log"))
	if err != nil {
		return nil, err
	}
	defer srv.stop()
	rows, images, err := grow(o, srv, (*benchclient.Client).PushPostPut)
	if err != nil {
		return nil, err
	}
	c := benchclient.NewClient(srv.base, 1)
	deleted := 0
	for i := 0; i < len(images); i += gcChanged {
		if err := c.DeleteManifest(images[i].repo, images[i].manifest); err != nil {
			return nil, err
		}
		deleted++
	}
	srv.stop()
	gc := exec.Command(o.registry, "garbage-collect", cfg)
	var out bytes.Buffer
	gc.Stdout, gc.Stderr = &out, &out
	start := time.Now()
	if err := gc.Run(); err != nil {
		return nil, fmt.Errorf("garbage-collect: %w\n%s", err, tail(out.Bytes()))
	}
	took := time.Since(start)
	met := took < targetGCPass
	return append(rows, Row{Name: fmt.Sprintf("GC pass after %d images deleted (garbage-collect, offline)", deleted),
		Value: ms(took), Unit: "ms", Limit: ms(targetGCPass), Ratio: ms(took) / ms(targetGCPass),
		Target: "< 1000 ms", Met: &met}), nil
}

// cpuTime is the CPU time this process has used (user + system): beside
// a pass's wall time on a loaded machine, what the pass itself cost.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func tail(b []byte) []byte {
	if len(b) > 2048 {
		b = b[len(b)-2048:]
	}
	return b
}

// pushImage pushes one image of its own: a layer of layerSize bytes made
// from seed, a config naming it, and a manifest tagged tag. It returns
// the manifest's digest.
func pushImage(c *benchclient.Client, push pushFunc, repo, tag string, seed uint64, layerSize int64) (string, error) {
	layer, config, m, err := imageContent(seed, layerSize)
	if err != nil {
		return "", err
	}
	for _, b := range [][]byte{layer, config} {
		if err := push(c, repo, digestOf(b), int64(len(b)), bytes.NewReader(b)); err != nil {
			return "", err
		}
	}
	return digestOf(m), c.PutManifest(repo, "v"+tag, ociManifest, m)
}

// imageContent is the layer, config and manifest of the image made from
// seed: the same bytes every run, so -gc-store finds a grown store's
// images without pushing them.
func imageContent(seed uint64, layerSize int64) (layer, config, manifest []byte, err error) {
	layer = make([]byte, layerSize)
	if _, err := io.ReadFull(benchclient.NewBlob(seed+(5<<32), layerSize), layer); err != nil {
		return nil, nil, nil, err
	}
	ld := digestOf(layer)
	config = []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["` + ld + `"]}}`)
	cd := digestOf(config)
	manifest = fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":%q,`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":%d}]}`,
		ociManifest, cd, len(config), ld, len(layer))
	return layer, config, manifest, nil
}

// grownImages lists the images grow pushes for o, as grow names them.
func grownImages(o options) []image {
	repos := max(1, o.images/10)
	images := make([]image, o.images)
	for i := range images {
		_, _, m, _ := imageContent(uint64(i), o.layer) // reading a NewBlob does not fail
		images[i] = image{fmt.Sprintf("grow/r%05d", i%repos), digestOf(m)}
	}
	return images
}

// sampleMemory reads the server's memory every 50 ms until the returned
// func is called, which answers the sample of the highest RSS and the one
// of the highest anonymous RSS: VmHWM says how high the RSS went, these
// say what it was made of then (the heap and badger's buffers are
// anonymous; the executable's and badger's mapped tables' pages are file).
func sampleMemory(pid int) func() (peak, peakAnon procMem) {
	var peak, peakAnon procMem
	stop := everyTick(50*time.Millisecond, func() {
		m, err := memory(pid)
		if err != nil {
			return
		}
		if m.RSS > peak.RSS {
			peak = m
		}
		if m.Anon > peakAnon.Anon {
			peakAnon = m
		}
	})
	return func() (procMem, procMem) {
		stop()
		return peak, peakAnon
	}
}

// everyTick calls f every interval on a goroutine of its own until the
// returned func is called, which returns once f's last call is over.
func everyTick(interval time.Duration, f func()) (stop func()) {
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				f()
			}
		}
	}()
	return func() { close(done); <-stopped }
}

// peakHeapProfiles, when profiling is on, watches the server's anonymous
// RSS every 200 ms and saves a heap profile (heap-peak.pprof) each time it
// passes its previous high by 4 MiB: the peak of a grown store comes from
// short bursts (badger's compactions), which a profile at the end misses.
// The returned func stops it.
func (s *server) peakHeapProfiles(o options) func() {
	if s.admin == "" {
		return func() {}
	}
	var high int64
	return everyTick(200*time.Millisecond, func() {
		m, err := memory(s.cmd.Process.Pid)
		if err != nil || m.Anon < high+4*mib {
			return
		}
		high = m.Anon
		if err := s.saveHeapProfile(filepath.Join(o.pprofDir, "heap-peak.pprof")); err != nil {
			fmt.Fprintln(os.Stderr, "ocibench:", err)
		}
	})
}
