package bench

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/bench/benchclient"
	"github.com/caddy-oci/caddy-oci/cache"
)

// Seeds keep every benchmark's blobs distinct, so no push is a dedupe.
const (
	seedLimit   = 1 << 32
	seedMono    = 2 << 32
	seedChunked = 3 << 32
	seedGet     = 4 << 32
	seedSmall   = 5 << 32
)

// BenchmarkLimitPush is the push limit alone: sha256 + write + fsync of the
// blob's bytes in the filesystem the store uses.
func BenchmarkLimitPush(b *testing.B) {
	size := blobSize(b)
	dir := b.TempDir()
	// A warm-up run, so every timed run writes into just-freed pages (see
	// benchPush).
	if _, _, err := limitPush(dir, seedLimit, size); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(size)
	mem := startMemPeak()
	b.ResetTimer()
	for i := range b.N {
		if _, _, err := limitPush(dir, seedLimit+uint64(i), size); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	mem.report(b)
}

// BenchmarkPushMonolithic: POST ?digest= with the whole blob as the body.
func BenchmarkPushMonolithic(b *testing.B) {
	benchPush(b, seedMono, func(c *benchclient.Client, repo, digest string, size int64, body io.Reader) error {
		return c.PushMonolithic(repo, digest, size, body)
	})
}

// BenchmarkPushChunked: POST, PATCH chunks with Content-Range, PUT ?digest=.
func BenchmarkPushChunked(b *testing.B) {
	chunk := chunkSize(b)
	benchPush(b, seedChunked, func(c *benchclient.Client, repo, digest string, size int64, body io.Reader) error {
		return c.PushChunked(repo, digest, size, chunk, body)
	})
}

// benchPush times push of a fresh blob per iteration; before each, with the
// timer stopped, it runs both limits on the same bytes: hash + write
// without fsync, then with (which also yields the digest the push
// declares). x-limit = push MB/s / limit MB/s (with fsync); x-write =
// push MB/s / write-limit MB/s (without: the push still fsyncs, so this
// is the harder bar, met only by overlapping the disk with the transfer).
// x-disk = push MB/s / the disk's own MB/s (benchclient.LimitDisk: the
// same bytes past the page cache, fsynced, no hash), the ceiling of any
// durable push: where it is below the write limit, x-write cannot reach 1
// and x-disk says how near the push is to what the disk allows.
//
// Page recycling: on a virtual machine, writing a file into pages the guest
// has not touched lately costs several times more than writing into pages
// freed a moment ago (the host backs guest memory lazily and takes free
// pages back after a few seconds): 1 GiB measured 1.7-3.5 s against 0.5 s
// here. Whichever of push and limit ran second would win by that alone.
// So both always write into just-freed pages: a warm-up limit run frees
// size bytes first, each limit removes its file before the push, and each
// pushed blob is dropped from the page cache (fadvise) before the next
// limit. That is also a server's steady state, where new writes reclaim
// clean cache pages.
func benchPush(b *testing.B, seed uint64, push func(c *benchclient.Client, repo, digest string, size int64, body io.Reader) error) {
	size := blobSize(b)
	e := newEnv(b)
	if _, _, err := limitPush(e.dir, seed, size); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(size)
	var limit, write, disk, cpu time.Duration
	mem := startMemPeak()
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		s := seed + uint64(i)
		_, took, err := limitWrite(e.dir, s, size)
		if err != nil {
			b.Fatal(err)
		}
		write += took
		took, err = benchclient.LimitDisk(e.dir, s, size)
		if err != nil {
			b.Fatal(err)
		}
		disk += took
		digest, took, err := limitPush(e.dir, s, size)
		if err != nil {
			b.Fatal(err)
		}
		limit += took
		cpu0 := processCPU()
		b.StartTimer()
		if err := push(e.c, "bench/push", digest, size, benchclient.NewBlob(s, size)); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		cpu += processCPU() - cpu0
		if err := benchclient.DropCache(blobFile(b, e, digest)); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	reportLimit(b, size, limit)
	b.ReportMetric(float64(size)*float64(b.N)/write.Seconds()/1e6, "write-MB/s")
	b.ReportMetric(write.Seconds()/b.Elapsed().Seconds(), "x-write")
	b.ReportMetric(float64(size)*float64(b.N)/disk.Seconds()/1e6, "disk-MB/s")
	b.ReportMetric(disk.Seconds()/b.Elapsed().Seconds(), "x-disk")
	b.ReportMetric(cpu.Seconds()/float64(b.N)/(float64(size)/(1<<30)), "cpu-s/GiB")
	mem.report(b)
}

// processCPU is the CPU time (user + system) this process has used: the
// client's and the server's together. On a shared machine it moves less
// than wall time with the load of others, so it tells a change that saves
// work from noise; work done by kernel threads (background write-back,
// flusher threads) is not in it.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuSplit is the CPU time a piece of work cost on this machine, split
// between this process (the client, and the registry when it is in the
// picture) and its child processes (the S3 server). On a shared 2-core
// machine, where other sessions take cores and wall-time ratios swing,
// these tell which side a change moved work to.
type cpuSplit struct{ self, children time.Duration }

// startCPU is where the CPU times are now; add(startCPU()) after the work.
func startCPU() cpuSplit { return cpuSplit{processCPU(), childrenCPU()} }

func (c *cpuSplit) add(since cpuSplit) {
	c.self += processCPU() - since.self
	c.children += childrenCPU() - since.children
}

// report adds the times per GiB of bytes moved, as <prefix>cpu-ms/GiB
// (this process) and <prefix>s3-cpu-ms/GiB (the children).
func (c cpuSplit) report(b *testing.B, prefix string, bytes int64) {
	gib := float64(bytes) / (1 << 30)
	b.ReportMetric(float64(c.self.Milliseconds())/gib, prefix+"cpu-ms/GiB")
	b.ReportMetric(float64(c.children.Milliseconds())/gib, prefix+"s3-cpu-ms/GiB")
}

// childrenCPU is the CPU time (user + system) of this process's children
// still running, from /proc/<pid>/stat (getrusage counts only children
// already waited for). Clock ticks are taken as 1/100 s, Linux's USER_HZ.
func childrenCPU() time.Duration {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	me := strconv.Itoa(os.Getpid())
	var t time.Duration
	for _, e := range ents {
		data, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // not a process, or gone
		}
		// pid (comm) state ppid ... utime stime: comm may hold spaces.
		s := string(data)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || i+2 > len(s) {
			continue
		}
		f := strings.Fields(s[i+2:])
		if len(f) < 13 || f[1] != me {
			continue
		}
		user, _ := strconv.ParseInt(f[11], 10, 64)
		sys, _ := strconv.ParseInt(f[12], 10, 64)
		t += time.Duration(user+sys) * 10 * time.Millisecond
	}
	return t
}

// reportLimit adds the limit's MB/s and the ratio of the timed work to it.
func reportLimit(b *testing.B, size int64, limit time.Duration) {
	b.ReportMetric(float64(size)*float64(b.N)/limit.Seconds()/1e6, "limit-MB/s")
	b.ReportMetric(limit.Seconds()/b.Elapsed().Seconds(), "x-limit")
}

// BenchmarkGetWarm: GET of a committed blob whose file is in the page
// cache, against the limit of plain http.ServeFile of the same file through
// its own server, timed alternately in the same run.
func BenchmarkGetWarm(b *testing.B) {
	size := blobSize(b)
	e := newEnv(b)
	digest, _, err := limitPush(e.dir, seedGet, size)
	if err != nil {
		b.Fatal(err)
	}
	if err := e.c.PushMonolithic("bench/get", digest, size, benchclient.NewBlob(seedGet, size)); err != nil {
		b.Fatal(err)
	}
	path := blobFile(b, e, digest)
	files := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, path)
	}))
	defer files.Close()
	fc := benchclient.NewClient(files.URL, 4)

	blobURL := e.c.Base() + "/v2/bench/get/blobs/" + digest
	// Warm the page cache and both connection pools.
	for _, get := range []func() error{
		func() error { return e.c.Get(blobURL, nil, size) },
		func() error { return fc.Get(files.URL+"/blob", nil, size) },
	} {
		if err := get(); err != nil {
			b.Fatal(err)
		}
	}

	b.SetBytes(size)
	var limit time.Duration
	mem := startMemPeak()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		start := time.Now()
		if err := fc.Get(files.URL+"/blob", nil, size); err != nil {
			b.Fatal(err)
		}
		limit += time.Since(start)
		b.StartTimer()
		if err := e.c.Get(blobURL, nil, size); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	reportLimit(b, size, limit)
	mem.report(b)
}

// blobFile is the path of the committed blob's file in the store, as
// cache.Options.Dir lays it out.
func blobFile(b *testing.B, e *env, digest string) string {
	d, err := cache.ParseDigest(digest)
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(e.dir, "store", "blobs", string(d.Algorithm), d.Hex[:2], d.Hex)
	if _, err := os.Stat(path); err != nil {
		b.Fatal(err)
	}
	return path
}

const (
	ociManifest = "application/vnd.oci.image.manifest.v1+json"
	acceptAll   = ociManifest + ", application/vnd.oci.image.index.v1+json, " +
		"application/vnd.docker.distribution.manifest.v2+json, " +
		"application/vnd.docker.distribution.manifest.list.v2+json"
)

// image is a config and one layer pushed to repo, from which small
// manifests (about 450 bytes) are made.
type image struct {
	config, layer         string
	configSize, layerSize int
}

func pushImage(b *testing.B, c *benchclient.Client, repo string) image {
	layer := make([]byte, 4096)
	benchclient.NewBlob(seedSmall, int64(len(layer))).Read(layer)
	ld := sha256Digest(layer)
	config := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["` + ld + `"]}}`)
	cd := sha256Digest(config)
	for _, p := range []struct {
		d string
		b []byte
	}{{ld, layer}, {cd, config}} {
		if err := c.PushMonolithic(repo, p.d, int64(len(p.b)), bytes.NewReader(p.b)); err != nil {
			b.Fatal(err)
		}
	}
	return image{config: cd, layer: ld, configSize: len(config), layerSize: len(layer)}
}

// manifest n is the image's manifest with n in an annotation, so every n
// has its own digest.
func (im image) manifest(n int) []byte {
	return []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":%d}],`+
		`"annotations":{"org.opencontainers.image.revision":"%d"}}`,
		ociManifest, im.config, im.configSize, im.layer, im.layerSize, n))
}

func sha256Digest(p []byte) string {
	s := sha256.Sum256(p)
	return "sha256:" + hex.EncodeToString(s[:])
}

// BenchmarkManifestPut: parallel clients PUT distinct small manifests under
// distinct tags. The limit, run first with the same number of clients and
// requests, is an HTTP handler that does sha256 + write + fsync of each
// body in the store's filesystem.
func BenchmarkManifestPut(b *testing.B) {
	p := parallelism(b)
	workers := p * runtime.GOMAXPROCS(0)
	e := newEnv(b)
	e.c = benchclient.NewClient(e.srv.URL, workers)
	im := pushImage(b, e.c, "bench/manifest")

	limitDir := filepath.Join(e.dir, "limit-manifests")
	if err := os.Mkdir(limitDir, 0o755); err != nil {
		b.Fatal(err)
	}
	var files atomic.Int64
	floor := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := syncedWrite(filepath.Join(limitDir, strconv.FormatInt(files.Add(1), 10)), r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Location", r.URL.Path)
		w.WriteHeader(http.StatusCreated)
	}))
	defer floor.Close()
	fc := benchclient.NewClient(floor.URL, workers)

	limit, err := benchclient.RunConcurrent(b.N, workers, func(i int) error {
		return fc.PutManifest("bench/manifest", "t"+strconv.Itoa(i), ociManifest, im.manifest(i))
	})
	if err != nil {
		b.Fatal(err)
	}

	var next atomic.Int64
	b.SetParallelism(p)
	mem := startMemPeak()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n := int(next.Add(1))
			if err := e.c.PutManifest("bench/manifest", "t"+strconv.Itoa(n), ociManifest, im.manifest(n)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	reportRate(b, limit)
	mem.report(b)
}

// syncedWrite is sha256 + write + fsync of r into a new file at path.
func syncedWrite(path string, r io.Reader) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := io.Copy(io.MultiWriter(f, sha256.New()), r); err != nil {
		return err
	}
	return f.Sync()
}

// BenchmarkManifestGet: parallel clients GET one small manifest by tag.
// The limit, run first with the same clients and requests, is plain
// http.ServeFile of a file holding the same bytes.
func BenchmarkManifestGet(b *testing.B) {
	p := parallelism(b)
	workers := p * runtime.GOMAXPROCS(0)
	e := newEnv(b)
	e.c = benchclient.NewClient(e.srv.URL, workers)
	im := pushImage(b, e.c, "bench/manifest")
	m := im.manifest(0)
	if err := e.c.PutManifest("bench/manifest", "latest", ociManifest, m); err != nil {
		b.Fatal(err)
	}

	path := filepath.Join(e.dir, "limit-manifest")
	if err := os.WriteFile(path, m, 0o644); err != nil {
		b.Fatal(err)
	}
	digest := sha256Digest(m)
	floor := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", ociManifest)
		w.Header().Set("Docker-Content-Digest", digest)
		http.ServeFile(w, r, path)
	}))
	defer floor.Close()
	fc := benchclient.NewClient(floor.URL, workers)
	accept := map[string]string{"Accept": acceptAll}
	size := int64(len(m))

	limit, err := benchclient.RunConcurrent(b.N, workers, func(int) error {
		return fc.Get(floor.URL+"/v2/bench/manifest/manifests/latest", accept, size)
	})
	if err != nil {
		b.Fatal(err)
	}

	u := e.c.Base() + "/v2/bench/manifest/manifests/latest"
	b.SetParallelism(p)
	mem := startMemPeak()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := e.c.Get(u, accept, size); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	reportRate(b, limit)
	mem.report(b)
}

// reportRate adds req/s, the limit's req/s and their ratio.
func reportRate(b *testing.B, limit time.Duration) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
	b.ReportMetric(float64(b.N)/limit.Seconds(), "limit-req/s")
	b.ReportMetric(limit.Seconds()/b.Elapsed().Seconds(), "x-limit")
}
