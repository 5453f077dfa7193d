package cache

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
	for _, size := range []int{0, 1, copyBufSize - 1, copyBufSize, 5*copyBufSize + 17} {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		for name, r := range map[string]io.Reader{
			"whole":    bytes.NewReader(data),
			"one byte": iotest.OneByteReader(bytes.NewReader(data[:min(size, 4096)])),
			"half":     iotest.HalfReader(bytes.NewReader(data)),
		} {
			want := data
			if name == "one byte" {
				want = data[:min(size, 4096)]
			}
			var out bytes.Buffer
			h := sha256.New()
			n, err := copyHashing(&out, h, r)
			if err != nil || n != int64(len(want)) {
				t.Fatalf("%d %s: n=%d err=%v", size, name, n, err)
			}
			if !bytes.Equal(out.Bytes(), want) {
				t.Fatalf("%d %s: bytes differ", size, name)
			}
			if sum := sha256.Sum256(want); !bytes.Equal(h.Sum(nil), sum[:]) {
				t.Fatalf("%d %s: hash differs", size, name)
			}
		}
	}
}

func TestCopyHashingReportsErrors(t *testing.T) {
	boom := errors.New("boom")
	src := io.MultiReader(bytes.NewReader(make([]byte, 3*copyBufSize)), iotest.ErrReader(boom))
	if _, err := copyHashing(io.Discard, sha256.New(), src); !errors.Is(err, boom) {
		t.Fatalf("read error: %v", err)
	}
	if _, err := copyHashing(failWriter{}, sha256.New(), bytes.NewReader(make([]byte, 10))); !errors.Is(err, errBoom) {
		t.Fatalf("write error: %v", err)
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errBoom }

var errBoom = errors.New("boom")
