package metatest

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/metastore"
)

// Benchmarks every backend runs the same way, so their figures compare:
//
//	func BenchmarkPutManifest(b *testing.B) { metatest.BenchPutManifest(b, open(b)) }

// benchManifest is an image manifest of about 250 bytes referencing a
// config and a layer.
func benchManifest(i int64) (metastore.Manifest, []byte) {
	config := blobstore.FromBytes(blobstore.SHA256, fmt.Appendf(nil, "config-%d", i))
	layer := blobstore.FromBytes(blobstore.SHA256, fmt.Appendf(nil, "layer-%d", i))
	body := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"config":{"digest":%q},"layers":[{"digest":%q}]}`, config, layer)
	return metastore.Manifest{
		Digest:    blobstore.FromBytes(blobstore.SHA256, body),
		MediaType: "application/vnd.oci.image.manifest.v1+json",
		Refs:      []metastore.Digest{config, layer},
	}, body
}

// BenchPutManifest measures manifest PUTs with a tag each, from parallel
// clients over 16 repositories, as the registry makes them (one
// transaction each), and reports puts/s.
func BenchPutManifest(b *testing.B, s metastore.Store) {
	var seq atomic.Int64
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := seq.Add(1)
			m, body := benchManifest(i)
			if err := s.PutManifest(context.Background(), fmt.Sprint("repo", i%16), m, body, []string{fmt.Sprint("t", i)}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "puts/s")
}

// BenchTagGet measures manifest GETs by tag as the registry makes them
// (the tag, then the manifest with its bytes) from parallel clients, and
// reports gets/s.
func BenchTagGet(b *testing.B, s metastore.Store) {
	const tags = 256
	for i := range int64(tags) {
		m, body := benchManifest(i)
		if err := s.PutManifest(context.Background(), "repo", m, body, []string{fmt.Sprint("t", i)}); err != nil {
			b.Fatal(err)
		}
	}
	var seq atomic.Int64
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			tag := fmt.Sprint("t", seq.Add(1)%tags)
			ti, err := s.Tag(context.Background(), "repo", tag)
			if err == nil {
				_, _, err = s.ManifestBody(context.Background(), "repo", ti.Digest)
			}
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "gets/s")
}
