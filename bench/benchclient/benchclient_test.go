package benchclient

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"testing"
	"time"
)

// The benchmarks are only as good as their apparatus: the blob stream must
// not depend on how it is read, and sizes must parse as documented.

func TestBlobIndependentOfReadSizes(t *testing.T) {
	const size = 3*blockSize + 5
	want, err := io.ReadAll(NewBlob(7, size))
	if err != nil || len(want) != size {
		t.Fatalf("ReadAll: %d bytes, %v", len(want), err)
	}
	for _, step := range []int{3, 7, 8, 13, 4096, 1 << 20, 1<<20 + 3} {
		got := make([]byte, 0, size)
		r, buf := NewBlob(7, size), make([]byte, step)
		for {
			n, err := r.Read(buf)
			got = append(got, buf[:n]...)
			if err == io.EOF {
				break
			}
		}
		if !bytes.Equal(got, want) {
			t.Errorf("read %d at a time: stream differs", step)
		}
	}
	other, _ := io.ReadAll(NewBlob(8, size))
	if bytes.Equal(other[:blockSize], want[:blockSize]) {
		t.Error("seeds 7 and 8 give the same stream")
	}
	if bytes.Equal(want[:blockSize], want[blockSize:2*blockSize]) {
		t.Error("two blocks of one blob are alike")
	}
}

func TestParseSize(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
	}{{"1GiB", 1 << 30}, {"64MiB", 64 << 20}, {"512KiB", 512 << 10}, {"1G", 1 << 30}, {"100", 100}, {" 2 MiB ", 2 << 20}} {
		if got, err := ParseSize(c.in); err != nil || got != c.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"", "0", "-1", "1TB", "x"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q): no error", in)
		}
	}
}

// The limits must do the work they stand for: LimitWrite and LimitPush
// write the blob's very bytes and hash them; LimitDisk writes them and
// leaves nothing behind.
func TestLimitsWriteTheBlob(t *testing.T) {
	const size = 2*blockSize + 77
	dir := t.TempDir()
	want, _ := io.ReadAll(NewBlob(3, size))
	for name, limit := range map[string]func(string, uint64, int64) (string, string, time.Duration, error){
		"LimitWrite": LimitWrite, "LimitPush": LimitPush,
	} {
		path, digest, took, err := limit(dir, 3, size)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s wrote %d bytes unlike the blob's %d (%v)", name, len(got), size, err)
		}
		if sum := sha256.Sum256(want); digest != "sha256:"+hex.EncodeToString(sum[:]) {
			t.Errorf("%s: digest %s is not the blob's", name, digest)
		}
		if took <= 0 {
			t.Errorf("%s took %v", name, took)
		}
		os.Remove(path)
	}
	if took, err := LimitDisk(dir, 3, size); err != nil || took <= 0 {
		t.Fatalf("LimitDisk: %v, %v", took, err)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("LimitDisk left %s behind", left[0].Name())
	}
}
