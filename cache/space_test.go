//go:build linux

package cache

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/caddy-oci/caddy-oci/internal/tmpfs"
)

const mib = 1 << 20

// spaceStore opens a store on a fresh tmpfs of size bytes with reserve.
func spaceStore(t *testing.T, size int64, opts Options) (*Store, string) {
	t.Helper()
	fs := tmpfs.Mount(t, size)
	opts.Dir = filepath.Join(fs, "data")
	return openStore(t, opts), fs
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// noTemp fails when a refused write left bytes behind in tmp/.
func noTemp(t *testing.T, s *Store) {
	t.Helper()
	ents, err := os.ReadDir(s.tmpDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		t.Errorf("temp file %s left behind", e.Name())
	}
}

// streamOnly hides the length of a reader: the store sees a stream.
type streamOnly struct{ r io.Reader }

func (s streamOnly) Read(p []byte) (int, error) { return s.r.Read(p) }

func TestStoreRefusesBlobBytesInReserve(t *testing.T) {
	const reserve = 16 * mib
	s, fs := spaceStore(t, 64*mib, Options{Reserve: SpaceReserve{Bytes: reserve}})
	const repo = "team/app"
	early := randomBytes(t, mib)
	ed := mustPut(t, s, early)
	mustLink(t, s, repo, ed)

	filler := tmpfs.FillTo(t, fs, reserve+6*mib)

	// A blob whose length is known and does not fit: refused up front.
	big := randomBytes(t, 8*mib)
	bd := digestOf(big)
	if _, err := s.PutBlob(t.Context(), bd, int64(len(big)), bytes.NewReader(big)); !errors.Is(err, ErrStorageFull) {
		t.Fatalf("PutBlob of 8 MiB with 6 MiB above the reserve = %v, want ErrStorageFull", err)
	}
	// A stream: the first window fits, the second crosses the reserve.
	if _, err := s.PutBlob(t.Context(), bd, -1, streamOnly{bytes.NewReader(big)}); !errors.Is(err, ErrStorageFull) {
		t.Fatalf("streamed PutBlob crossing the reserve = %v, want ErrStorageFull", err)
	}
	noTemp(t, s)
	if _, err := s.StatBlob(t.Context(), bd); !errors.Is(err, ErrBlobUnknown) {
		t.Errorf("refused blob is visible: %v", err)
	}

	// A chunk stream crossing the reserve is cut off: the session stays
	// where it was and can go on once there is room.
	u, err := s.NewUpload(t.Context(), repo)
	if err != nil {
		t.Fatal(err)
	}
	if u, err = s.AppendUpload(t.Context(), repo, u.ID, 0, bytes.NewReader(big[:mib])); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AppendUpload(t.Context(), repo, u.ID, u.Size, streamOnly{bytes.NewReader(big[mib:])}); !errors.Is(err, ErrStorageFull) {
		t.Fatalf("chunk crossing the reserve = %v, want ErrStorageFull", err)
	}
	if got, err := s.GetUpload(t.Context(), repo, u.ID); err != nil || got.Size != mib {
		t.Fatalf("session after the refused chunk: %+v, %v; want size %d", got, err, mib)
	}
	if fi, err := os.Stat(s.uploadPath(u.ID)); err != nil || fi.Size() != mib {
		t.Fatalf("session data after the refused chunk: %v, %v; want %d bytes", fi, err, mib)
	}

	// Inside the reserve: no new bytes at all, but metadata still changes.
	os.Remove(filler)
	filler = tmpfs.FillTo(t, fs, reserve-mib)
	small := []byte("a few bytes")
	if _, err := s.PutBlob(t.Context(), digestOf(small), int64(len(small)), bytes.NewReader(small)); !errors.Is(err, ErrStorageFull) {
		t.Errorf("PutBlob inside the reserve = %v, want ErrStorageFull", err)
	}
	man := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`)
	m := Manifest{Digest: digestOf(man), MediaType: "application/vnd.oci.image.manifest.v1+json"}
	if err := s.PutManifest(t.Context(), repo, m, man, []string{"v1"}); !errors.Is(err, ErrStorageFull) {
		t.Errorf("PutManifest inside the reserve = %v, want ErrStorageFull", err)
	}
	if _, err := s.ResolveTag(t.Context(), repo, "v1"); !errors.Is(err, ErrTagUnknown) {
		t.Errorf("refused manifest's tag: %v, want ErrTagUnknown", err)
	}
	if err := s.LinkBlob(t.Context(), "team/other", ed); err != nil {
		t.Errorf("linking inside the reserve: %v", err)
	}
	if _, err := s.NewUpload(t.Context(), repo); err != nil {
		t.Errorf("starting a session inside the reserve: %v", err)
	}
	src := func(context.Context) (io.ReadCloser, int64, error) {
		t.Error("a fill asked its source while the store had no room")
		return nil, 0, errors.New("unreachable")
	}
	if _, _, err := s.Fill(t.Context(), "docker.io/library/x", bd, src); !errors.Is(err, ErrStorageFull) {
		t.Errorf("Fill inside the reserve = %v, want ErrStorageFull", err)
	}
	noTemp(t, s)

	// Someone else takes the rest: metadata writes are refused too, before
	// badger could fault on a page the filesystem cannot give; reads go on.
	os.Remove(filler)
	filler = tmpfs.FillTo(t, fs, 0)
	if err := s.LinkBlob(t.Context(), "team/third", ed); !errors.Is(err, ErrStorageFull) {
		t.Errorf("linking on a full filesystem = %v, want ErrStorageFull", err)
	}
	if _, err := s.NewUpload(t.Context(), repo); !IsStorageFull(err) {
		t.Errorf("starting a session on a full filesystem = %v, want a full storage", err)
	}
	if _, err := s.HasBlob(t.Context(), "team/other", ed); err != nil {
		t.Errorf("reading on a full filesystem: %v", err)
	}
	if got := mustRead(t, s, ed); !bytes.Equal(got, early) {
		t.Error("earlier blob changed")
	}

	// Space freed: everything goes on without reopening the store.
	os.Remove(filler)
	if err := s.LinkBlob(t.Context(), "team/third", ed); err != nil {
		t.Errorf("linking after freeing space: %v", err)
	}
	if _, err := s.AppendUpload(t.Context(), repo, u.ID, u.Size, bytes.NewReader(big[mib:])); err != nil {
		t.Fatalf("resuming the session after freeing space: %v", err)
	}
	if _, err := s.CommitUpload(t.Context(), repo, u.ID, bd); err != nil {
		t.Fatalf("committing it: %v", err)
	}
	if err := s.PutManifest(t.Context(), repo, m, man, []string{"v1"}); err != nil {
		t.Errorf("PutManifest after freeing space: %v", err)
	}
	if got := mustRead(t, s, ed); !bytes.Equal(got, early) {
		t.Error("earlier blob changed")
	}
	if got := mustRead(t, s, bd); !bytes.Equal(got, big) {
		t.Error("resumed blob differs")
	}
}

func mustRead(t *testing.T, s *Store, d Digest) []byte {
	t.Helper()
	f, err := s.OpenBlob(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestFillCrossingReserve: a fill that runs into the reserve fails as a
// full storage and leaves nothing behind.
func TestFillCrossingReserve(t *testing.T) {
	const reserve = 16 * mib
	s, fs := spaceStore(t, 64*mib, Options{Reserve: SpaceReserve{Bytes: reserve}})
	tmpfs.FillTo(t, fs, reserve+6*mib)
	blob := randomBytes(t, 12*mib)
	d := digestOf(blob)
	src := func(context.Context) (io.ReadCloser, int64, error) {
		return io.NopCloser(bytes.NewReader(blob)), -1, nil
	}
	f, _, err := s.Fill(t.Context(), "docker.io/library/x", d, src)
	if err != nil {
		t.Fatal(err)
	}
	err = f.Wait(context.Background())
	if !errors.Is(err, ErrFillFailed) || !IsStorageFull(err) {
		t.Fatalf("fill = %v, want a failed fill from a full storage", err)
	}
	noTemp(t, s)
	if _, err := s.StatBlob(t.Context(), d); !errors.Is(err, ErrBlobUnknown) {
		t.Errorf("failed fill is visible: %v", err)
	}
}

// TestNoSpaceFromFilesystem: with no reserve and the disk filled by
// someone else, the filesystem's ENOSPC is a full storage too, and the
// temp file goes. The metadata lives on another filesystem (MetadataDir),
// as an operator without a reserve should keep it.
func TestNoSpaceFromFilesystem(t *testing.T) {
	meta := t.TempDir()
	s, fs := spaceStore(t, 16*mib, Options{MetadataDir: meta})
	if _, err := os.Stat(filepath.Join(meta, "MANIFEST")); err != nil {
		t.Fatalf("badger is not in MetadataDir: %v", err)
	}
	if _, err := os.Stat(filepath.Join(s.dir, "meta")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("meta/ made in Dir although MetadataDir is set: %v", err)
	}
	blob := randomBytes(t, 4*mib)
	// Someone else takes the last byte once the write has been admitted.
	src := &fillingReader{r: bytes.NewReader(blob), fill: func() { tmpfs.FillTo(t, fs, 0) }}
	_, err := s.PutBlob(t.Context(), digestOf(blob), int64(len(blob)), src)
	if !IsStorageFull(err) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("PutBlob on a full filesystem = %v, want ENOSPC as a full storage", err)
	}
	noTemp(t, s)
}

// fillingReader calls fill before its first read.
type fillingReader struct {
	r    io.Reader
	fill func()
	once sync.Once
}

func (f *fillingReader) Read(p []byte) (int, error) {
	f.once.Do(f.fill)
	return f.r.Read(p)
}

// TestNoSpaceMidBlob: the filesystem fills (someone else's write) after a
// big push has had write-back started on its first windows: a full
// storage (the guard's next look or the filesystem's ENOSPC, whichever
// comes first), the temp file goes and no blob appears. Chunked, the
// session keeps only its earlier chunks.
func TestNoSpaceMidBlob(t *testing.T) {
	s, fs := spaceStore(t, 3*bigBlobSize, Options{MetadataDir: t.TempDir()})
	blob := patterned(bigBlobSize, 5)
	d := digestOf(blob)
	half := len(blob) / 2
	filler := filepath.Join(fs, "filler")
	// The push's own writes go on while the filler is written: fill up
	// to ENOSPC rather than to a measured size.
	fillUp := func() {
		f, err := os.Create(filler)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		for b := make([]byte, mib); err == nil; {
			_, err = f.Write(b)
		}
	}
	fillingFrom := func(from int) io.Reader {
		return io.MultiReader(bytes.NewReader(blob[from:half]), &fillingReader{r: bytes.NewReader(blob[half:]), fill: fillUp})
	}
	if _, err := s.PutBlob(t.Context(), d, int64(len(blob)), fillingFrom(0)); !IsStorageFull(err) {
		t.Fatalf("PutBlob filling the disk midway = %v, want a full storage", err)
	}
	noTemp(t, s)
	if _, err := s.StatBlob(t.Context(), d); !errors.Is(err, ErrBlobUnknown) {
		t.Fatalf("blob visible after the disk filled: %v", err)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}

	u, err := s.NewUpload(t.Context(), "app")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AppendUpload(t.Context(), "app", u.ID, 0, bytes.NewReader(blob[:100])); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AppendUpload(t.Context(), "app", u.ID, 100, fillingFrom(100)); !IsStorageFull(err) {
		t.Fatalf("AppendUpload filling the disk midway = %v, want a full storage", err)
	}
	if got, err := s.GetUpload(t.Context(), "app", u.ID); err != nil || got.Size != 100 {
		t.Fatalf("session after the disk filled = %+v, %v; want size 100", got, err)
	}
	if fi, err := os.Stat(s.uploadPath(u.ID)); err != nil || fi.Size() != 100 {
		t.Fatalf("session data after the disk filled not cut back: %v", err)
	}
}

// TestOpenOnFullDisk: a store reopened on a filesystem another program
// filled while it was closed refuses to open with ErrStorageFull, rather
// than letting badger start a memtable there (a SIGBUS that ends the
// process at every start), and opens with all it held once space is
// freed. So does a fresh metadata folder on a full filesystem.
func TestOpenOnFullDisk(t *testing.T) {
	fs := tmpfs.Mount(t, 64*mib)
	opts := Options{Dir: filepath.Join(fs, "data"), Reserve: SpaceReserve{Bytes: 16 * mib}}
	s, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	blob := randomBytes(t, mib)
	d := mustPut(t, s, blob)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	filler := tmpfs.FillTo(t, fs, 0)
	if s, err := Open(opts); !IsStorageFull(err) {
		if err == nil {
			s.Close()
		}
		t.Fatalf("Open on a full disk: %v, want ErrStorageFull", err)
	}
	fresh := opts
	fresh.MetadataDir = filepath.Join(fs, "meta", "new")
	if s, err := Open(fresh); !IsStorageFull(err) {
		if err == nil {
			s.Close()
		}
		t.Fatalf("Open of a new metadata folder on a full disk: %v, want ErrStorageFull", err)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, opts)
	info, err := s.StatBlob(t.Context(), d)
	if err != nil || info.Size != int64(len(blob)) {
		t.Fatalf("blob after space came back: %+v, %v", info, err)
	}
}

// TestCommitOfKnownBlobRefusedKeepsSession: the last step of a chunked
// push of a blob the store holds already (pushed to another repository)
// is refused on a full filesystem. The session stays whole (its data
// included) and commits once space is freed; before, its data was
// dropped as a duplicate before the refused link, and the retry found a
// session that said it held the bytes but could no longer commit.
func TestCommitOfKnownBlobRefusedKeepsSession(t *testing.T) {
	s, fs := spaceStore(t, 64*mib, Options{Reserve: SpaceReserve{Bytes: 16 * mib}})
	blob := randomBytes(t, mib)
	d := mustPut(t, s, blob)
	if err := s.LinkBlob(t.Context(), "team/first", d); err != nil {
		t.Fatal(err)
	}
	const repo = "team/second"
	u, err := s.NewUpload(t.Context(), repo)
	if err != nil {
		t.Fatal(err)
	}
	if u, err = s.AppendUpload(t.Context(), repo, u.ID, 0, bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}

	filler := tmpfs.FillTo(t, fs, 0)
	if _, err := s.CommitUpload(t.Context(), repo, u.ID, d); !IsStorageFull(err) {
		t.Fatalf("commit on a full filesystem = %v, want a full storage", err)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetUpload(t.Context(), repo, u.ID); err != nil || got.Size != int64(len(blob)) {
		t.Fatalf("session after the refused commit: %+v, %v", got, err)
	}
	if _, err := s.CommitUpload(t.Context(), repo, u.ID, d); err != nil {
		t.Fatalf("commit after space was freed: %v", err)
	}
	if info, err := s.HasBlob(t.Context(), repo, d); err != nil || info.Size != int64(len(blob)) {
		t.Errorf("blob in %s after the commit: %+v, %v", repo, info, err)
	}
	if n, err := os.ReadDir(filepath.Join(s.dir, "uploads")); err != nil || len(n) != 0 {
		t.Errorf("uploads/ after the commit: %d entries, %v", len(n), err)
	}
}
