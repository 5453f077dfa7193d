package bench

// The apparatus of the benchmarks: sizes from flags or environment, the
// registry under test, and a heap high-water sampler. The blob stream, the
// limits and the registry client are in bench/benchclient, shared with
// cmd/ocibench.

import (
	"flag"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strconv"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/bench/benchclient"
	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/registry"
)

const mib = 1 << 20

var (
	blobSizeFlag  = flag.String("blobsize", "", "size of the pushed and fetched blob, e.g. 1GiB, 64MiB (default $OCI_BENCH_BLOB_SIZE, else 1GiB)")
	chunkSizeFlag = flag.String("chunksize", "", "PATCH size of the chunked push (default $OCI_BENCH_CHUNK_SIZE, else 64MiB)")
	parallelFlag  = flag.Int("clientsper", 0, "manifest benchmarks: client goroutines per GOMAXPROCS (default $OCI_BENCH_PARALLELISM, else 8)")
)

// setting returns the flag's value, else the environment's, else def.
func setting(flagVal, env, def string) string {
	if flagVal != "" {
		return flagVal
	}
	if v := os.Getenv(env); v != "" {
		return v
	}
	return def
}

func blobSize(b *testing.B) int64 {
	return mustSize(b, setting(*blobSizeFlag, "OCI_BENCH_BLOB_SIZE", "1GiB"))
}

func chunkSize(b *testing.B) int64 {
	return mustSize(b, setting(*chunkSizeFlag, "OCI_BENCH_CHUNK_SIZE", "64MiB"))
}

func parallelism(b *testing.B) int {
	if *parallelFlag > 0 {
		return *parallelFlag
	}
	if v := os.Getenv("OCI_BENCH_PARALLELISM"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("OCI_BENCH_PARALLELISM=%q: want a positive integer", v)
		}
		return n
	}
	return 8
}

func mustSize(b *testing.B, s string) int64 {
	n, err := benchclient.ParseSize(s)
	if err != nil {
		b.Fatal(err)
	}
	return n
}

// limitPush runs benchclient.LimitPush and removes the file it wrote, as
// every benchmark wants; it returns the blob's digest and the time taken.
func limitPush(dir string, seed uint64, size int64) (string, time.Duration, error) {
	return removed(benchclient.LimitPush(dir, seed, size))
}

// limitWrite is limitPush without the fsync (benchclient.LimitWrite).
func limitWrite(dir string, seed uint64, size int64) (string, time.Duration, error) {
	return removed(benchclient.LimitWrite(dir, seed, size))
}

func removed(path, digest string, took time.Duration, err error) (string, time.Duration, error) {
	if err != nil {
		return "", 0, err
	}
	os.Remove(path)
	return digest, took, nil
}

// env is one registry under test: a store in a temp dir, the handler behind
// a real HTTP server, and a client with a tuned transport.
type env struct {
	dir   string // same filesystem as the store; the limits write here
	store *cache.Store
	srv   *httptest.Server
	c     *benchclient.Client
}

func newEnv(b *testing.B) *env {
	b.Helper()
	dir := b.TempDir()
	st, err := cache.Open(cache.Options{Dir: filepath.Join(dir, "store")}) // blobFile knows this path
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	srv := httptest.NewServer(registry.New(registry.Config{Store: st}))
	b.Cleanup(srv.Close)
	return &env{dir: dir, store: st, srv: srv, c: benchclient.NewClient(srv.URL, 64)}
}

// memPeak samples the Go heap (live and not yet swept objects) every
// millisecond and keeps the high-water mark; it also reports how much
// more memory the runtime took from the OS over the run (MemStats.Sys
// delta). Client, server and limits share the process, so both figures
// bound the server's own use from above.
type memPeak struct {
	stop, done chan struct{}
	peak       uint64
	sys0       uint64
}

const heapObjects = "/memory/classes/heap/objects:bytes"

func startMemPeak() *memPeak {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	m := &memPeak{stop: make(chan struct{}), done: make(chan struct{}), sys0: ms.Sys}
	go func() {
		defer close(m.done)
		s := []metrics.Sample{{Name: heapObjects}}
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(s)
			m.peak = max(m.peak, s[0].Value.Uint64())
			select {
			case <-m.stop:
				return
			case <-t.C:
			}
		}
	}()
	return m
}

func (m *memPeak) report(b *testing.B) {
	close(m.stop)
	<-m.done
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(m.peak)/mib, "peak-heap-MiB")
	var delta uint64
	if ms.Sys > m.sys0 {
		delta = ms.Sys - m.sys0
	}
	b.ReportMetric(float64(delta)/mib, "sys-delta-MiB")
}
