package blobfile

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// bigBlobSize crosses several write-back windows and the wait lag, and
// ends off a window's edge.
const bigBlobSize = WriteBehindLag + 3*WriteBehindWindow + 4321

// TestWriteBehindWriter: the writer puts the bytes where they belong from
// any starting offset, and (where the platform can) has started and waited
// for write-back behind the newest bytes as it went.
func TestWriteBehindWriter(t *testing.T) {
	t.Parallel()
	const at = 12345
	data := make([]byte, bigBlobSize)
	rand.NewChaCha8([32]byte{1}).Read(data)
	f, err := os.Create(filepath.Join(t.TempDir(), "blob"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(bytes.Repeat([]byte{'h'}, at)); err != nil {
		t.Fatal(err)
	}
	w := WriteBehind(f, at)
	if _, err := io.CopyBuffer(w, struct{ io.Reader }{bytes.NewReader(data)}, make([]byte, 3<<20+7)); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:at], bytes.Repeat([]byte{'h'}, at)) || !bytes.Equal(got[at:], data) {
		t.Fatal("file differs from what was written")
	}
	wb, ok := w.(*writeBehindWriter)
	if !canWriteBehind {
		if ok {
			t.Fatal("write-behind where the platform cannot")
		}
		return
	}
	end := int64(at + len(data))
	if wb.off != end || wb.started < end-WriteBehindWindow || wb.waited < end-WriteBehindWindow-WriteBehindLag || wb.waited <= at {
		t.Errorf("offsets: next %d, started to %d, waited to %d; file ends at %d", wb.off, wb.started, wb.waited, end)
	}
}
