package cache

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"testing"
	"testing/iotest"

	"github.com/caddy-oci/caddy-oci/cache/internal/blobfile"
)

// bigBlobSize crosses several write-back windows and the wait lag, and
// ends off a window's edge.
const bigBlobSize = blobfile.WriteBehindLag + 3*blobfile.WriteBehindWindow + 4321

func patterned(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, seed+1))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := rng.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// TestBigBlobsThroughWriteBehind: blobs larger than the write-back lag,
// pushed whole (from a reader handing out odd sizes) and in chunks, come
// out byte for byte, under their digest.
func TestBigBlobsThroughWriteBehind(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{Dir: t.TempDir()})
	whole := patterned(bigBlobSize, 2)
	wd := digestOf(whole)
	if n, err := s.PutBlob(t.Context(), wd, int64(len(whole)), iotest.HalfReader(bytes.NewReader(whole))); err != nil || n != int64(len(whole)) {
		t.Fatalf("PutBlob = %d, %v", n, err)
	}
	if !bytes.Equal(readBlob(t, s, wd), whole) {
		t.Fatal("pushed blob differs")
	}

	chunked := patterned(bigBlobSize, 3)
	cd := digestOf(chunked)
	u, err := s.NewUpload(t.Context(), "app")
	if err != nil {
		t.Fatal(err)
	}
	// Chunks that start mid-window: write-behind from a non-zero offset.
	third := len(chunked)/3 + 1
	appendChunks(t, s, "app", u.ID, chunked[:third], chunked[third:2*third], chunked[2*third:])
	info, err := s.CommitUpload(t.Context(), "app", u.ID, cd)
	if err != nil || info.Size != int64(len(chunked)) {
		t.Fatalf("CommitUpload = %+v, %v", info, err)
	}
	if !bytes.Equal(readBlob(t, s, cd), chunked) {
		t.Fatal("chunked blob differs")
	}

	// Chunks of whole MiB, as clients send them, the last one with an
	// odd tail.
	aligned := patterned(bigBlobSize, 5)
	ad := digestOf(aligned)
	u, err = s.NewUpload(t.Context(), "app")
	if err != nil {
		t.Fatal(err)
	}
	var chunks [][]byte
	for rest := aligned; len(rest) > 0; {
		n := min(len(rest), 5<<20)
		chunks, rest = append(chunks, rest[:n]), rest[n:]
	}
	appendChunks(t, s, "app", u.ID, chunks...)
	if info, err := s.CommitUpload(t.Context(), "app", u.ID, ad); err != nil || info.Size != int64(len(aligned)) {
		t.Fatalf("CommitUpload = %+v, %v", info, err)
	}
	if !bytes.Equal(readBlob(t, s, ad), aligned) {
		t.Fatal("blob pushed in aligned chunks differs")
	}
	noTempFiles(t, s)
}

// TestBigBlobFailuresLeaveNothing: a big push that fails after write-back
// has begun — body cut short, wrong digest, reader error — leaves no blob
// and no temp file; a chunk that fails leaves its session as it was.
func TestBigBlobFailuresLeaveNothing(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{Dir: t.TempDir()})
	data := patterned(bigBlobSize, 4)
	d := digestOf(data)
	short := data[:len(data)-blobfile.WriteBehindWindow]
	boom := errors.New("connection reset")
	cases := []struct {
		name    string
		want    Digest
		size    int64
		r       io.Reader
		wantErr error
	}{
		{"short body", d, int64(len(data)), bytes.NewReader(short), ErrSizeMismatch},
		{"short stream", d, -1, bytes.NewReader(short), ErrDigestMismatch},
		{"wrong digest", digestOf(short), int64(len(data)), bytes.NewReader(data), ErrDigestMismatch},
		{"reader fails", d, int64(len(data)), io.MultiReader(bytes.NewReader(short), iotest.ErrReader(boom)), boom},
	}
	for _, c := range cases {
		if _, err := s.PutBlob(t.Context(), c.want, c.size, c.r); !errors.Is(err, c.wantErr) {
			t.Errorf("%s: PutBlob = %v, want %v", c.name, err, c.wantErr)
		}
		for _, gone := range []Digest{d, digestOf(short)} {
			if _, err := s.StatBlob(t.Context(), gone); !errors.Is(err, ErrBlobUnknown) {
				t.Errorf("%s: %s visible after the failure: %v", c.name, gone, err)
			}
		}
		noTempFiles(t, s)
	}

	u, err := s.NewUpload(t.Context(), "app")
	if err != nil {
		t.Fatal(err)
	}
	// A failing first chunk, at offset 0: cut off like any other.
	if _, err := s.AppendUpload(t.Context(), "app", u.ID, 0, io.MultiReader(bytes.NewReader(short), iotest.ErrReader(boom))); !errors.Is(err, boom) {
		t.Fatalf("AppendUpload with a failing first body = %v", err)
	}
	if got, err := s.GetUpload(t.Context(), "app", u.ID); err != nil || got.Size != 0 {
		t.Fatalf("session after the failed first chunk = %+v, %v; want size 0", got, err)
	}
	if fi, err := os.Stat(s.uploadPath(u.ID)); err != nil || fi.Size() != 0 {
		t.Fatalf("session data after the failed first chunk: %v", err)
	}
	appendChunks(t, s, "app", u.ID, data[:100])
	if _, err := s.AppendUpload(t.Context(), "app", u.ID, 100, io.MultiReader(bytes.NewReader(short[100:]), iotest.ErrReader(boom))); !errors.Is(err, boom) {
		t.Fatalf("AppendUpload with a failing body = %v", err)
	}
	if got, err := s.GetUpload(t.Context(), "app", u.ID); err != nil || got.Size != 100 {
		t.Fatalf("session after the failed chunk = %+v, %v; want size 100", got, err)
	}
	if fi, err := os.Stat(s.uploadPath(u.ID)); err != nil || fi.Size() != 100 {
		t.Fatalf("session data after the failed chunk: %v", err)
	}
	appendChunks(t, s, "app", u.ID, data[100:])
	if _, err := s.CommitUpload(t.Context(), "app", u.ID, digestOf(short)); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("CommitUpload with the wrong digest = %v", err)
	}
	if _, err := s.StatBlob(t.Context(), d); !errors.Is(err, ErrBlobUnknown) {
		t.Errorf("blob visible after a refused commit: %v", err)
	}
	if _, err := s.CommitUpload(t.Context(), "app", u.ID, d); err != nil {
		t.Fatalf("CommitUpload after the refused one: %v", err)
	}
	if !bytes.Equal(readBlob(t, s, d), data) {
		t.Fatal("blob differs")
	}
}

// noTempFiles fails when a write left bytes behind in tmp/.
func noTempFiles(t *testing.T, s *Store) {
	t.Helper()
	if left := dirEntries(t, s.tmpDir); len(left) != 0 {
		t.Errorf("temp files left behind: %v", left)
	}
}
