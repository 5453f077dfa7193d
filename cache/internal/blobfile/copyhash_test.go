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

// bigBufWatch is a reader of n zero bytes that records the most big
// buffers out while it was read.
type bigBufWatch struct {
	r    io.Reader
	most int
}

func (b *bigBufWatch) Read(p []byte) (int, error) {
	b.most = max(b.most, len(bigOut))
	return b.r.Read(p)
}

// A write of unknown size (a PUT with its body: most are configs and
// small layers) takes big buffers only once it holds more than a small
// one: 32 clients pushing 4 KiB blobs held the whole 16 MiB budget.
func TestCopyHashingUnknownSmallTakesNoBigBuffer(t *testing.T) {
	for _, n := range []int{0, 1, 4096, SmallBufSize - 1} {
		src := &bigBufWatch{r: bytes.NewReader(bytes.Repeat([]byte{7}, n))}
		var dst bytes.Buffer
		h := sha256.New()
		got, err := CopyHashing(&dst, h, src, -1)
		if err != nil || got != int64(n) || dst.Len() != n {
			t.Fatalf("%d bytes: copied %d (%d written), %v", n, got, dst.Len(), err)
		}
		if want := sha256.Sum256(dst.Bytes()); !bytes.Equal(h.Sum(nil), want[:]) {
			t.Fatalf("%d bytes: hash differs", n)
		}
		if src.most != 0 {
			t.Errorf("%d bytes of unknown size: %d big buffers out while reading, want 0", n, src.most)
		}
	}
	// Past the small buffer it still gets the pipeline's big buffers.
	src := &bigBufWatch{r: bytes.NewReader(make([]byte, 3*CopyBufSize))}
	if _, err := CopyHashing(io.Discard, sha256.New(), src, -1); err != nil {
		t.Fatal(err)
	}
	if src.most != pipelineDepth {
		t.Errorf("a large stream read with %d big buffers out, want %d", src.most, pipelineDepth)
	}
}
