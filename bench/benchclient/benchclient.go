// Package benchclient is the apparatus shared by the benchmarks in bench/
// and by cmd/ocibench: sizes, a deterministic blob stream, the push limit,
// a registry client speaking just enough of the distribution API, a
// concurrent runner and a page-cache drop.
package benchclient

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const mib = 1 << 20

// ParseSize reads "1073741824", "1GiB", "64MiB", "512KiB", "1G", "64M".
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size %q: want a positive number of bytes, optionally with KiB, MiB or GiB", s)
	}
	return n * mult, nil
}

// Blob is a deterministic stream of size pseudo-random bytes that costs
// about a memcpy to produce, so the apparatus stays out of the figures: a
// 1 MiB block of splitmix64 output made from the seed, repeated, with the
// first 8 bytes of every block replaced by a hash of (seed, block index)
// so no two blocks are alike. The stream does not depend on how callers
// size their reads, and no blob is ever held in memory.
type Blob struct {
	seed  uint64
	off   int64
	size  int64
	block []byte
}

const blockSize = 1 << 20

// NewBlob returns the stream of size bytes for seed.
func NewBlob(seed uint64, size int64) *Blob {
	block := make([]byte, blockSize)
	for j := range uint64(blockSize / 8) {
		binary.LittleEndian.PutUint64(block[j*8:], mix(seed, j))
	}
	return &Blob{seed: seed, size: size, block: block}
}

func mix(seed, j uint64) uint64 {
	z := seed + (j+1)*0x9e3779b97f4a7c15
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// Read implements io.Reader.
func (r *Blob) Read(p []byte) (int, error) {
	if r.off >= r.size {
		return 0, io.EOF
	}
	if rest := r.size - r.off; int64(len(p)) > rest {
		p = p[:rest]
	}
	for n := 0; n < len(p); {
		bi, in := r.off/blockSize, int(r.off%blockSize)
		c := copy(p[n:], r.block[in:])
		if in < 8 {
			var stamp [8]byte
			binary.LittleEndian.PutUint64(stamp[:], mix(^r.seed, uint64(bi)))
			copy(p[n:n+min(c, 8-in)], stamp[in:])
		}
		n += c
		r.off += int64(c)
	}
	return len(p), nil
}

// LimitPush is the push limit: sha256 of the blob's bytes while writing
// them to a new file in dir, then fsync — what a registry must at least do
// to commit a blob, without HTTP. The same 1 MiB copy buffer as the store.
// It keeps the file (closed) and returns its path, the blob's digest and
// the time taken; the caller removes the file.
//
// Page recycling: on a virtual machine, writing a file into pages the guest
// has not touched lately costs several times more than writing into pages
// freed a moment ago (the host backs guest memory lazily and takes free
// pages back after a few seconds). Whichever of push and limit ran second
// would win by that alone, so callers make both always write into
// just-freed pages: a warm-up limit run frees the pages for the first
// limit, each limit file is removed right before its push, and each pushed
// blob is dropped from the page cache (DropCache) right before the next
// limit.
func LimitPush(dir string, seed uint64, size int64) (path, digest string, took time.Duration, err error) {
	return limit(dir, seed, size, true)
}

// LimitWrite is LimitPush without the fsync: sha256 while writing to a
// new file in dir, the bytes left in the page cache. It is the bar for a
// push that starts write-back while the bytes arrive: such a push pays
// for the disk mostly while it is still reading, and its ratio to this
// limit shows how much of the disk's time is still left for the end.
// Same results and page-recycling note as LimitPush.
func LimitWrite(dir string, seed uint64, size int64) (path, digest string, took time.Duration, err error) {
	return limit(dir, seed, size, false)
}

func limit(dir string, seed uint64, size int64, sync bool) (path, digest string, took time.Duration, err error) {
	buf := make([]byte, mib)
	start := time.Now()
	f, err := os.CreateTemp(dir, "limit-push-*")
	if err != nil {
		return "", "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(io.MultiWriter(f, h), NewBlob(seed, size), buf); err != nil {
		return "", "", 0, err
	}
	if sync {
		if err := f.Sync(); err != nil {
			return "", "", 0, err
		}
	}
	took = time.Since(start)
	return f.Name(), "sha256:" + hex.EncodeToString(h.Sum(nil)), took, nil
}

// RunConcurrent calls fn(0..n-1) from workers goroutines, as b.RunParallel
// would, and returns the wall time and the first error. The limits of the
// request-rate measurements run through it with the same concurrency as
// the real thing.
func RunConcurrent(n, workers int, fn func(i int) error) (time.Duration, error) {
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				if err := fn(int(i)); err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	return time.Since(start), firstErr
}
