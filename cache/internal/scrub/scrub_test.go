package scrub

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
)

// TestPacerNoBurstAfterSlowReads: a pass that fell behind its pace (reads
// slower than the rate) goes on at the rate, not at full speed until it
// caught up.
func TestPacerNoBurstAfterSlowReads(t *testing.T) {
	p := NewPacer(4 << 20)
	p.start = time.Now().Add(-10 * time.Second) // ten seconds of reads of nothing
	if err := p.Wait(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := p.Wait(context.Background(), 2<<20); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 400*time.Millisecond {
		t.Fatalf("2 MiB at 4 MiB/s after a slow stretch took %s: a burst", took)
	}
}

// TestVerify: the bytes of d pass; other bytes, or d's at another length
// than recorded, are ErrDamaged.
func TestVerify(t *testing.T) {
	data := bytes.Repeat([]byte("blob"), 1000)
	d := blobstore.FromBytes(blobstore.SHA256, data)
	buf := make([]byte, 512)
	p := NewPacer(1 << 40)
	if n, err := Verify(context.Background(), bytes.NewReader(data), d, int64(len(data)), p, buf); err != nil || n != int64(len(data)) {
		t.Fatalf("Verify of the blob's bytes: %d, %v", n, err)
	}
	bad := bytes.Clone(data)
	bad[100] ^= 1
	if _, err := Verify(context.Background(), bytes.NewReader(bad), d, int64(len(data)), p, buf); !errors.Is(err, ErrDamaged) {
		t.Fatalf("Verify of a flipped byte: %v", err)
	}
	if _, err := Verify(context.Background(), bytes.NewReader(data), d, int64(len(data))+1, p, buf); !errors.Is(err, ErrDamaged) {
		t.Fatalf("Verify at another length than recorded: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Verify(ctx, bytes.NewReader(data), d, -1, NewPacer(1<<20), buf); !errors.Is(err, context.Canceled) {
		t.Fatalf("Verify with its context ended: %v", err)
	}
}
