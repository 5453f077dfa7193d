// Package scrub checks stored blobs against their digests, slowly. Every
// blob is verified when it is written, but the bytes can change after:
// a disk's bit rot, a bad controller, a restore from a damaged backup,
// someone's tool editing files in place. A change of length is seen at
// the next read (the stores compare lengths with their records); one that
// keeps the length is seen only by hashing, which is what a scrub pass
// does in the background, at a bounded rate so pulls keep the disk.
//
// This package holds what the stores' passes share: the pace and the
// check of one blob. Each store walks its own records and decides what a
// damaged blob becomes.
package scrub

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
)

// DefaultRate is the pace of a pass when none is configured: a tenth or
// less of what a disk or a bucket serves, so a pass over a terabyte
// takes about six hours.
const DefaultRate = 48 << 20 // bytes per second

// ErrDamaged: the stored bytes are not the blob's (another digest, or
// another length than recorded).
var ErrDamaged = errors.New("stored bytes do not match the digest")

// Pacer keeps a pass at rate bytes per second on average.
type Pacer struct {
	rate  int64
	start time.Time
	n     int64
}

// NewPacer starts a pace of rate bytes per second (at least 1 MiB/s).
func NewPacer(rate int64) *Pacer {
	return &Pacer{rate: max(rate, 1<<20), start: time.Now()}
}

// Wait counts n more bytes read and sleeps until the pace allows them,
// or ctx ends.
func (p *Pacer) Wait(ctx context.Context, n int) error {
	p.n += int64(n)
	due := p.start.Add(time.Duration(float64(p.n) / float64(p.rate) * float64(time.Second)))
	d := time.Until(due)
	if d < -time.Second {
		// Behind its pace (a busy disk read slower than rate): start the
		// count again rather than catch up in a burst at full speed,
		// which is what the pace is there to prevent.
		p.start, p.n = time.Now(), 0
	}
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Verify reads r to its end at p's pace and checks that it holds blob
// d: size bytes (size < 0: any length) hashing to d. It returns the bytes
// read, and an error wrapping ErrDamaged when they are not d's; any other
// error is the read's (or ctx's) and says nothing about the bytes.
func Verify(ctx context.Context, r io.Reader, d blobstore.Digest, size int64, p *Pacer, buf []byte) (int64, error) {
	h := d.Algorithm.New()
	n, err := copyPaced(ctx, h, r, p, buf)
	if err != nil {
		return n, err
	}
	if size >= 0 && n != size {
		return n, fmt.Errorf("%w: %s: %d bytes stored, %d recorded", ErrDamaged, d, n, size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != d.Hex {
		return n, fmt.Errorf("%w: %s: the stored bytes hash to %s", ErrDamaged, d, got)
	}
	return n, nil
}

func copyPaced(ctx context.Context, h hash.Hash, r io.Reader, p *Pacer, buf []byte) (int64, error) {
	var n int64
	for {
		k, err := r.Read(buf)
		if k > 0 {
			h.Write(buf[:k])
			n += int64(k)
			if werr := p.Wait(ctx, k); werr != nil {
				return n, werr
			}
		}
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}
