package blobfile

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
	"testing/iotest"
)

func TestCopyHashingMatchesSequentialCopy(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, size := range []int{0, 1, SmallBufSize, SmallBufSize + 1, CopyBufSize - 1, CopyBufSize, 5*CopyBufSize + 17} {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		for _, spent := range []bool{false, true} {
			var held []*[]byte
			if spent {
				held = spendBigBufs()
			}
			for name, reader := range map[string]func() io.Reader{
				"whole":    func() io.Reader { return bytes.NewReader(data) },
				"one byte": func() io.Reader { return iotest.OneByteReader(bytes.NewReader(data[:min(size, 4096)])) },
				"half":     func() io.Reader { return iotest.HalfReader(bytes.NewReader(data)) },
			} {
				want := data
				if name == "one byte" {
					want = data[:min(size, 4096)]
				}
				for _, hint := range []int64{-1, int64(len(want))} {
					var out bytes.Buffer
					h := sha256.New()
					n, err := CopyHashing(&out, h, reader(), hint)
					if err != nil || n != int64(len(want)) {
						t.Fatalf("%d %s (hint %d, budget spent %v): n=%d err=%v", size, name, hint, spent, n, err)
					}
					if !bytes.Equal(out.Bytes(), want) {
						t.Fatalf("%d %s (hint %d, budget spent %v): bytes differ", size, name, hint, spent)
					}
					if sum := sha256.Sum256(want); !bytes.Equal(h.Sum(nil), sum[:]) {
						t.Fatalf("%d %s (hint %d, budget spent %v): hash differs", size, name, hint, spent)
					}
				}
			}
			for _, bp := range held {
				PutBuf(bp)
			}
		}
	}
}

// spendBigBufs takes every big buffer left in the budget; the caller
// gives them back with PutBuf.
func spendBigBufs() []*[]byte {
	var held []*[]byte
	for {
		bp := tryBigBuf()
		if bp == nil {
			return held
		}
		held = append(held, bp)
	}
}

// Whatever the number of writes in flight, big copy buffers stay within
// the budget: past it a write gets a small buffer, and a small blob never
// takes a big one.
func TestCopyBuffersAreBounded(t *testing.T) {
	held := spendBigBufs()
	if len(held) > bigBufBudget {
		t.Fatalf("%d big buffers out, budget %d", len(held), bigBufBudget)
	}
	for _, size := range []int64{-1, 1 << 30} {
		bp := GetBuf(size)
		if cap(*bp) != SmallBufSize {
			t.Fatalf("budget spent: GetBuf(%d) gave %d bytes, want the small %d", size, cap(*bp), SmallBufSize)
		}
		PutBuf(bp)
	}
	for _, bp := range held {
		PutBuf(bp)
	}
	if bp := GetBuf(-1); cap(*bp) != CopyBufSize {
		t.Errorf("budget back: GetBuf(-1) gave %d bytes, want the big %d", cap(*bp), CopyBufSize)
	} else {
		PutBuf(bp)
	}
	if bp := GetBuf(4096); cap(*bp) != SmallBufSize {
		t.Errorf("GetBuf(4096) gave %d bytes, want the small %d", cap(*bp), SmallBufSize)
	} else {
		PutBuf(bp)
	}
}

func TestCopyHashingReportsErrors(t *testing.T) {
	boom := errors.New("boom")
	src := io.MultiReader(bytes.NewReader(make([]byte, 3*CopyBufSize)), iotest.ErrReader(boom))
	if _, err := CopyHashing(io.Discard, sha256.New(), src, -1); !errors.Is(err, boom) {
		t.Fatalf("read error: %v", err)
	}
	if _, err := CopyHashing(failWriter{}, sha256.New(), bytes.NewReader(make([]byte, 10)), 10); !errors.Is(err, errBoom) {
		t.Fatalf("write error: %v", err)
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errBoom }

var errBoom = errors.New("boom")
