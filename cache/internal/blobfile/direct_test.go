package blobfile

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// TestWriteDirect: whatever the start offset and the sizes and alignment
// of the buffers handed in, the file ends up holding exactly the bytes
// written, and on a filesystem that takes O_DIRECT (the test's temp dir,
// ext4 on CI) most of a long write went direct.
func TestWriteDirect(t *testing.T) {
	t.Parallel()
	data := make([]byte, bigBlobSize)
	rand.NewChaCha8([32]byte{2}).Read(data)
	for _, tc := range []struct {
		name     string
		at       int64
		bufSize  int
		misalign int  // buffer starts this far past an aligned address
		direct   bool // all but the last buffer go direct; else all buffered
	}{
		{"aligned", 0, 1 << 20, 0, true},
		{"aligned-after-chunk", 64 << 20, 1 << 20, 0, true},
		{"small-buffers", 4096, 32 << 10, 0, true},
		// Unaligned offsets (in the file, or in memory once the head
		// is written) cannot go direct without a copy: all buffered.
		{"unaligned-offset", 12345, 1 << 20, 0, false},
		{"misaligned-memory", 8192, 1 << 20, 512, false},
		// The first buffer's whole blocks go direct, its odd tail puts
		// the offset off alignment for the rest.
		{"odd-buffers", 0, 3<<20 + 7, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f, err := os.Create(filepath.Join(t.TempDir(), "blob"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			head := bytes.Repeat([]byte{'h'}, int(tc.at))
			if _, err := f.Write(head); err != nil {
				t.Fatal(err)
			}
			w, done := WriteDirect(f, tc.at)
			buf := alignedBuf(tc.bufSize + tc.misalign)[tc.misalign:]
			if _, err := io.CopyBuffer(w, struct{ io.Reader }{bytes.NewReader(data)}, buf); err != nil {
				t.Fatal(err)
			}
			done()
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			// f is buffered again: an unaligned write works.
			if _, err := f.WriteAt([]byte("tail"), tc.at+int64(len(data))); err != nil {
				t.Fatalf("write after done: %v", err)
			}
			got, err := os.ReadFile(f.Name())
			if err != nil {
				t.Fatal(err)
			}
			want := append(append(head, data...), "tail"...)
			if !bytes.Equal(got, want) {
				t.Fatal("file differs from what was written")
			}
			dw, ok := w.(*directWriter)
			if !canWriteDirect || !canWriteBehind {
				if ok {
					t.Fatal("direct writes where the platform cannot")
				}
				return
			}
			if dw.failed {
				t.Skipf("the filesystem of %s refuses O_DIRECT", t.TempDir())
			}
			if tc.direct && dw.nDirect < int64(len(data))-int64(tc.bufSize)-directAlign {
				t.Errorf("only %d of %d bytes went direct", dw.nDirect, len(data))
			}
			if !tc.direct {
				var want int64 // the first buffer's whole blocks, if they start aligned
				if tc.at%directAlign == 0 && tc.misalign == 0 {
					want = int64(tc.bufSize) &^ (directAlign - 1)
				}
				if dw.nDirect != want {
					t.Errorf("%d bytes went direct, want %d", dw.nDirect, want)
				}
			}
			if dw.behind.off != tc.at+int64(len(data)) {
				t.Errorf("write-behind at %d, file ends at %d", dw.behind.off, tc.at+int64(len(data)))
			}
		})
	}
}

// alignedBuf returns n bytes starting at a directAlign boundary.
func alignedBuf(n int) []byte {
	b := make([]byte, n+directAlign)
	for i := range directAlign {
		if aligned(b[i:]) {
			return b[i : i+n]
		}
	}
	panic("no aligned start")
}
