package cache

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/internal/blobfile"
	"github.com/caddy-oci/caddy-oci/cache/internal/writelimit"
)

const benchBlobSize = 64 << 20

// pushLimit is what a push cannot beat: sha256 of the bytes while writing
// them to a file in the same store, then fsync.
func pushLimit(b *testing.B, dir string, data []byte) time.Duration {
	return writelimit.Measure(b, dir, data, sha256.New(), blobfile.CopyBufSize)
}

// BenchmarkPush reports the store's push rate and its ratio to pushLimit
// measured in the same run (target >= 0.85).
func BenchmarkPush(b *testing.B) {
	data := make([]byte, benchBlobSize)
	rand.Read(data)
	d := digestOf(data)
	const chunk = 8 << 20

	modes := []struct {
		name string
		push func(b *testing.B, s *Store)
	}{
		{"monolithic", func(b *testing.B, s *Store) {
			if _, err := s.PutBlob(b.Context(), d, int64(len(data)), bytes.NewReader(data)); err != nil {
				b.Fatal(err)
			}
		}},
		{"chunked", func(b *testing.B, s *Store) {
			u, err := s.NewUpload(b.Context(), "bench")
			if err != nil {
				b.Fatal(err)
			}
			for off := 0; off < len(data); off += chunk {
				if _, err := s.AppendUpload(b.Context(), "bench", u.ID, int64(off), bytes.NewReader(data[off:off+chunk])); err != nil {
					b.Fatal(err)
				}
			}
			if _, err := s.CommitUpload(b.Context(), "bench", u.ID, d); err != nil {
				b.Fatal(err)
			}
		}},
	}
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			dir := b.TempDir()
			s := openStore(b, Options{Dir: dir})
			b.SetBytes(int64(len(data)))
			var limit, store time.Duration
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				limit += pushLimit(b, filepath.Join(dir, "tmp"), data)
				os.Remove(s.blobPath(d))
				b.StartTimer()
				start := time.Now()
				m.push(b, s)
				store += time.Since(start)
			}
			b.ReportMetric(float64(limit)/float64(store), "ratio_to_limit")
		})
	}
}

// BenchmarkPutBlobSmall prices what a small push pays besides its bytes:
// the whole PutBlob of a 4 KiB blob (file fsync, directory fsync, the
// synced GC-candidate mark), and on their own the mark (one synced badger
// write), a look at the free space (statfs) and the upload-limits meter.
func BenchmarkPutBlobSmall(b *testing.B) {
	s := openStore(b, Options{Dir: b.TempDir()})
	blob := func(i int) []byte {
		p := make([]byte, 4<<10)
		binary.BigEndian.PutUint64(p, uint64(i))
		return p
	}
	b.Run("PutBlob", func(b *testing.B) {
		for i := range b.N {
			p := blob(i)
			if _, err := s.PutBlob(b.Context(), digestOf(p), int64(len(p)), bytes.NewReader(p)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("gc-mark", func(b *testing.B) {
		for i := range b.N {
			if err := s.markBlobs(digestOf(blob(-1 - i))); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("statfs", func(b *testing.B) {
		for range b.N {
			s.space.Measure()
		}
	})
	b.Run("meter", func(b *testing.B) {
		p := blob(0)
		buf := make([]byte, len(p))
		for range b.N {
			m := s.meter(bytes.NewReader(p), "", 0)
			if _, err := m.Read(buf); err != nil {
				b.Fatal(err)
			}
			s.release(m.reserved, "")
		}
	})
}
