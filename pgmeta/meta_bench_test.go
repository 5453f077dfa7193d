package pgmeta

import (
	"context"
	"fmt"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/metastore"

	"github.com/caddy-oci/caddy-oci/cache/metastore/metatest"
)

// The same benchmarks as badgermeta's, so the figures compare; the test
// server runs with fsync off, so these are PostgreSQL's upper bound.

func BenchmarkPutManifest(b *testing.B) { metatest.BenchPutManifest(b, openStore(b)) }

func BenchmarkTagGet(b *testing.B) { metatest.BenchTagGet(b, openStore(b)) }

// BenchmarkMoveTag: one tag moved back and forth, one write at a time,
// so ns/op is a write's latency (each in a transaction of its own, see
// execTx).
func BenchmarkMoveTag(b *testing.B) {
	s := openStore(b)
	ctx := context.Background()
	var ds [2]metastore.Digest
	for i := range ds {
		body := fmt.Appendf(nil, `{"schemaVersion":2,"n":%d}`, i)
		m := metastore.Manifest{Digest: blobstore.FromBytes(blobstore.SHA256, body), MediaType: "application/vnd.oci.image.manifest.v1+json"}
		if err := s.PutManifest(ctx, "r", m, body, nil); err != nil {
			b.Fatal(err)
		}
		ds[i] = m.Digest
	}
	if err := s.MoveTag(ctx, "r", "t", metastore.Digest{}, ds[0]); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := range b.N {
		if err := s.MoveTag(ctx, "r", "t", ds[i%2], ds[(i+1)%2]); err != nil {
			b.Fatal(err)
		}
	}
}
