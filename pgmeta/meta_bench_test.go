package pgmeta

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/metastore"
)

// benchManifest is a manifest of n bytes or so referencing two layers.
func benchManifest(i int64) (metastore.Manifest, []byte) {
	l1 := blobstore.FromBytes(blobstore.SHA256, fmt.Appendf(nil, "l1-%d", i))
	l2 := blobstore.FromBytes(blobstore.SHA256, fmt.Appendf(nil, "l2-%d", i))
	body := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"config":{"digest":%q},"layers":[{"digest":%q}]}`, l1, l2)
	return metastore.Manifest{
		Digest:    blobstore.FromBytes(blobstore.SHA256, body),
		MediaType: "application/vnd.oci.image.manifest.v1+json",
		Refs:      []metastore.Digest{l1, l2},
	}, body
}

// BenchmarkPutManifest: manifest PUTs with a tag each, from parallel
// clients, as the registry makes them (one transaction each).
func BenchmarkPutManifest(b *testing.B) {
	s := openStore(b)
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

// BenchmarkTagGet: a manifest GET by tag as the registry makes it: the
// tag, then the manifest with its bytes.
func BenchmarkTagGet(b *testing.B) {
	s := openStore(b)
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
