package fs

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/internal/blobfile"
	"github.com/caddy-oci/caddy-oci/cache/internal/writelimit"
)

const benchBlobSize = 256 << 20

// plainWrite is what a write to this folder costs with nothing of the
// store's around it: the bytes written to a new file in tmp/ and fsynced,
// no hash, no write-behind, no rename.
func plainWrite(b *testing.B, s *Store, data []byte) time.Duration {
	return writelimit.Measure(b, s.tmpDir, data, nil, blobfile.CopyBufSize)
}

// BenchmarkWrite reports the store's write rate for a 256 MiB blob, put
// whole and appended in chunks through a resumed session, and its ratio
// to a plain write+fsync of the same bytes measured in the same run. The
// store hashes (sha256) what it writes, so on a disk faster than the hash
// the ratio is the hash's cost.
func BenchmarkWrite(b *testing.B) {
	data := make([]byte, benchBlobSize)
	rand.NewChaCha8([32]byte{'b'}).Read(data)
	d := blobstore.FromBytes(blobstore.SHA256, data)
	const chunk = 64 << 20
	ctx := context.Background()

	modes := []struct {
		name  string
		write func(b *testing.B, s *Store)
	}{
		{"Put", func(b *testing.B, s *Store) {
			if _, err := s.Put(ctx, d, int64(len(data)), bytes.NewReader(data)); err != nil {
				b.Fatal(err)
			}
		}},
		{"SessionAppendCommit", func(b *testing.B, s *Store) {
			sess, err := s.NewSession(ctx)
			if err != nil {
				b.Fatal(err)
			}
			for off := 0; off < len(data); off += chunk {
				// Each chunk on a session resumed from its state, as the
				// next request on any replica would.
				state, err := sess.State()
				if err != nil {
					b.Fatal(err)
				}
				if sess, err = s.ResumeSession(ctx, state); err != nil {
					b.Fatal(err)
				}
				if _, err := sess.Append(ctx, int64(off), bytes.NewReader(data[off:off+chunk])); err != nil {
					b.Fatal(err)
				}
			}
			if _, err := sess.Commit(ctx, d, int64(len(data))); err != nil {
				b.Fatal(err)
			}
		}},
	}
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			s := newStore(b, b.TempDir())
			b.SetBytes(int64(len(data)))
			var plain, store time.Duration
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				plain += plainWrite(b, s, data)
				if err := s.Delete(ctx, d); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				start := time.Now()
				m.write(b, s)
				store += time.Since(start)
			}
			mb := float64(len(data)) * float64(b.N) / 1e6
			b.ReportMetric(mb/plain.Seconds(), "plain_MB/s")
			b.ReportMetric(float64(plain)/float64(store), "ratio_to_plain")
		})
	}
}
