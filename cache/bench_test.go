package cache

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

const benchBlobSize = 64 << 20

// pushLimit is what a push cannot beat: sha256 of the bytes while writing
// them to a file in the same store, then fsync.
func pushLimit(b *testing.B, dir string, data []byte) time.Duration {
	b.Helper()
	start := time.Now()
	f, err := os.CreateTemp(dir, "limit-*")
	if err != nil {
		b.Fatal(err)
	}
	h := sha256.New()
	buf := make([]byte, copyBufSize)
	if _, err := io.CopyBuffer(io.MultiWriter(f, h), struct{ io.Reader }{bytes.NewReader(data)}, buf); err != nil {
		b.Fatal(err)
	}
	h.Sum(nil)
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	f.Close()
	el := time.Since(start)
	os.Remove(f.Name())
	return el
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
			if _, err := s.PutBlob(d, int64(len(data)), bytes.NewReader(data)); err != nil {
				b.Fatal(err)
			}
		}},
		{"chunked", func(b *testing.B, s *Store) {
			u, err := s.NewUpload("bench")
			if err != nil {
				b.Fatal(err)
			}
			for off := 0; off < len(data); off += chunk {
				if _, err := s.AppendUpload("bench", u.ID, int64(off), bytes.NewReader(data[off:off+chunk])); err != nil {
					b.Fatal(err)
				}
			}
			if _, err := s.CommitUpload("bench", u.ID, d); err != nil {
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
