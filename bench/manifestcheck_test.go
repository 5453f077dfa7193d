package bench

import (
	"bytes"
	"context"
	"fmt"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/caddy-oci/caddy-oci/bench/benchclient"
	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/composite"
	"github.com/caddy-oci/caddy-oci/registry"
)

// unchecked is the composite store as a manifest push saw it on S3
// before it asked the bucket for each blob: every blob stored.
type unchecked struct{ *composite.Store }

func (unchecked) CheckBlobStored(context.Context, string, cache.Digest, int64) error { return nil }

// serial checks one blob at a time, as the registry did before it
// checked a manifest's blobs concurrently: with one client, what the
// concurrency saves. (With many clients it serialises them all.)
type serial struct {
	*composite.Store
	mu *sync.Mutex
}

func (s serial) CheckBlobStored(ctx context.Context, repo string, d cache.Digest, size int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Store.CheckBlobStored(ctx, repo, d, size)
}

// BenchmarkS3ManifestPutCheck: parallel manifest PUTs on S3 + PostgreSQL,
// each manifest a config and 1 or 10 layers, with the check that each
// blob is still in the bucket (a HEAD per blob, 8 at a time) and without
// it (as before), against the same store in one run; compare req/s.
// With one client (-clientsper 1 -cpu 1), serial is the check one blob
// after another, as before the checks of a manifest ran concurrently.
//
//	go test -run '^$' -bench 'S3ManifestPutCheck/.*/(un)?checked$' -benchtime 2000x ./bench/
//	go test -run '^$' -bench 'S3ManifestPutCheck' -benchtime 500x -clientsper 1 -cpu 1 ./bench/
func BenchmarkS3ManifestPutCheck(b *testing.B) {
	for _, layers := range []int{1, 10} {
		st, _, _, _ := newScaleStore(b)
		p := parallelism(b)
		conns := p * runtime.GOMAXPROCS(0)
		servers := map[string]*benchclient.Client{}
		stores := map[string]registry.Store{"unchecked": unchecked{st}, "checked": st, "serial": serial{st, new(sync.Mutex)}}
		for name, store := range stores {
			h := httptest.NewServer(registry.New(registry.Config{Store: store}))
			b.Cleanup(h.Close)
			servers[name] = benchclient.NewClient(h.URL, conns)
		}
		manifest := pushLayers(b, servers["checked"], "bench/manifest", layers)
		for _, name := range []string{"unchecked", "checked", "serial"} {
			b.Run(fmt.Sprintf("layers=%d/%s", layers, name), func(b *testing.B) {
				c := servers[name]
				var next atomic.Int64
				b.SetParallelism(p)
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						n := int(next.Add(1))
						if err := c.PutManifest("bench/manifest", name+strconv.Itoa(n), ociManifest, manifest(n)); err != nil {
							b.Error(err)
							return
						}
					}
				})
				b.StopTimer()
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
			})
		}
	}
}

// pushLayers pushes a config and n small layers to repo and returns the
// image's manifest with its argument in an annotation, so that each has
// its own digest.
func pushLayers(b *testing.B, c *benchclient.Client, repo string, n int) func(int) []byte {
	b.Helper()
	var descs []string
	push := func(mediaType string, p []byte) string {
		d := sha256Digest(p)
		if err := c.PushMonolithic(repo, d, int64(len(p)), bytes.NewReader(p)); err != nil {
			b.Fatal(err)
		}
		return fmt.Sprintf(`{"mediaType":%q,"digest":%q,"size":%d}`, mediaType, d, len(p))
	}
	for i := range n {
		layer := make([]byte, 4096)
		benchclient.NewBlob(seedSmall+uint64(i), int64(len(layer))).Read(layer)
		descs = append(descs, push("application/vnd.oci.image.layer.v1.tar", layer))
	}
	config := push("application/vnd.oci.image.config.v1+json", []byte(`{"architecture":"amd64","os":"linux","layers":`+strconv.Itoa(n)+`}`))
	return func(i int) []byte {
		return []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":%s,"layers":[%s],`+
			`"annotations":{"org.opencontainers.image.revision":"%d"}}`, ociManifest, config, strings.Join(descs, ","), i))
	}
}
