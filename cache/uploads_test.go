package cache

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"
)

func appendChunks(t testing.TB, s *Store, repo, id string, chunks ...[]byte) Upload {
	t.Helper()
	var u Upload
	var off int64
	if cur, err := s.GetUpload(t.Context(), repo, id); err == nil {
		off = cur.Size
	}
	for _, c := range chunks {
		var err error
		u, err = s.AppendUpload(t.Context(), repo, id, off, bytes.NewReader(c))
		if err != nil {
			t.Fatalf("AppendUpload at %d: %v", off, err)
		}
		off += int64(len(c))
		if u.Size != off {
			t.Fatalf("size after chunk = %d, want %d", u.Size, off)
		}
	}
	return u
}

func readBlob(t testing.TB, s *Store, d Digest) []byte {
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

func TestUploadCommit(t *testing.T) {
	t.Parallel()
	chunks := [][]byte{[]byte("first "), bytes.Repeat([]byte("x"), 3<<20), nil, []byte(" last")}
	all := bytes.Join(chunks, nil)
	tests := []struct {
		name string
		want Digest
	}{
		{"sha256", FromBytes(SHA256, all)},
		{"sha512", FromBytes(SHA512, all)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			s := openStore(t, Options{Dir: dir})
			u, err := s.NewUpload(t.Context(), "app")
			if err != nil {
				t.Fatal(err)
			}
			if len(u.ID) != 32 || u.Size != 0 || u.Repo != "app" || u.Started.IsZero() {
				t.Fatalf("NewUpload = %+v", u)
			}
			appendChunks(t, s, "app", u.ID, chunks...)
			if got, err := s.GetUpload(t.Context(), "app", u.ID); err != nil || got.Size != int64(len(all)) {
				t.Fatalf("GetUpload = %+v, %v", got, err)
			}
			info, err := s.CommitUpload(t.Context(), "app", u.ID, tt.want)
			if err != nil {
				t.Fatal(err)
			}
			if info.Digest != tt.want || info.Size != int64(len(all)) {
				t.Errorf("CommitUpload = %+v", info)
			}
			if !bytes.Equal(readBlob(t, s, tt.want), all) {
				t.Error("committed content differs")
			}
			if _, err := s.HasBlob(t.Context(), "app", tt.want); err != nil {
				t.Errorf("not linked: %v", err)
			}
			_, err = s.GetUpload(t.Context(), "app", u.ID)
			wantErr(t, "GetUpload after commit", err, ErrUploadUnknown)
			if got := dirEntries(t, filepath.Join(dir, "uploads")); len(got) != 0 {
				t.Errorf("uploads/ not empty: %v", got)
			}
		})
	}
}

func TestUploadEmptyAndExisting(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{})
	u, _ := s.NewUpload(t.Context(), "app")
	if _, err := s.CommitUpload(t.Context(), "app", u.ID, digestOf(nil)); err != nil {
		t.Fatalf("empty commit: %v", err)
	}
	// A blob already in the store (from another repo): the upload's data is
	// dropped, the link is made.
	d := mustPut(t, s, []byte("dup"))
	mustLink(t, s, "other", d)
	u, _ = s.NewUpload(t.Context(), "app")
	appendChunks(t, s, "app", u.ID, []byte("dup"))
	if _, err := s.CommitUpload(t.Context(), "app", u.ID, d); err != nil {
		t.Fatal(err)
	}
	if _, err := s.HasBlob(t.Context(), "app", d); err != nil {
		t.Error(err)
	}
}

func TestUploadErrors(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{})
	u, err := s.NewUpload(t.Context(), "app")
	if err != nil {
		t.Fatal(err)
	}
	appendChunks(t, s, "app", u.ID, []byte("abc"))

	_, err = s.AppendUpload(t.Context(), "app", u.ID, 0, strings.NewReader("zzz"))
	wantErr(t, "append at stale offset", err, ErrOffsetMismatch)
	_, err = s.AppendUpload(t.Context(), "app", u.ID, 10, strings.NewReader("zzz"))
	wantErr(t, "append past the end", err, ErrOffsetMismatch)

	// A chunk that breaks off mid-way leaves nothing behind.
	_, err = s.AppendUpload(t.Context(), "app", u.ID, 3, iotest.TimeoutReader(strings.NewReader("defg")))
	wantErr(t, "broken chunk", err, iotest.ErrTimeout)
	if got, _ := s.GetUpload(t.Context(), "app", u.ID); got.Size != 3 {
		t.Errorf("size after broken chunk = %d", got.Size)
	}
	appendChunks(t, s, "app", u.ID, []byte("def"))

	// Digest mismatch keeps the session, so the client may retry.
	_, err = s.CommitUpload(t.Context(), "app", u.ID, digestOf([]byte("nope")))
	wantErr(t, "commit mismatch", err, ErrDigestMismatch)
	_, err = s.CommitUpload(t.Context(), "app", u.ID, FromBytes(SHA512, []byte("nope")))
	wantErr(t, "commit mismatch sha512", err, ErrDigestMismatch)
	if got, err := s.GetUpload(t.Context(), "app", u.ID); err != nil || got.Size != 6 {
		t.Fatalf("session after mismatch = %+v, %v", got, err)
	}
	_, err = s.CommitUpload(t.Context(), "app", u.ID, Digest{Algorithm: "md5", Hex: "00"})
	wantErr(t, "commit invalid digest", err, ErrDigestInvalid)

	// Other repository, unknown or malformed ids.
	for _, tc := range []struct{ repo, id string }{
		{"other", u.ID}, {"app", strings.Repeat("0", 32)}, {"app", "../../meta"}, {"app", ""},
	} {
		_, err := s.GetUpload(t.Context(), tc.repo, tc.id)
		wantErr(t, "GetUpload "+tc.id, err, ErrUploadUnknown)
		_, err = s.AppendUpload(t.Context(), tc.repo, tc.id, 0, strings.NewReader("x"))
		wantErr(t, "AppendUpload "+tc.id, err, ErrUploadUnknown)
		_, err = s.CommitUpload(t.Context(), tc.repo, tc.id, digestOf(nil))
		wantErr(t, "CommitUpload "+tc.id, err, ErrUploadUnknown)
		wantErr(t, "CancelUpload "+tc.id, s.CancelUpload(t.Context(), tc.repo, tc.id), ErrUploadUnknown)
	}

	if _, err := s.CommitUpload(t.Context(), "app", u.ID, digestOf([]byte("abcdef"))); err != nil {
		t.Fatalf("retry commit: %v", err)
	}
}

func TestUploadCancel(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openStore(t, Options{Dir: dir})
	u, _ := s.NewUpload(t.Context(), "app")
	appendChunks(t, s, "app", u.ID, []byte("data"))
	if err := s.CancelUpload(t.Context(), "app", u.ID); err != nil {
		t.Fatal(err)
	}
	_, err := s.GetUpload(t.Context(), "app", u.ID)
	wantErr(t, "GetUpload after cancel", err, ErrUploadUnknown)
	wantErr(t, "cancel twice", s.CancelUpload(t.Context(), "app", u.ID), ErrUploadUnknown)
	if _, err := os.Stat(filepath.Join(dir, "uploads", u.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("data file left: %v", err)
	}
}

// gateReader blocks its first Read until released, and says when that
// Read has begun (the append then holds the session).
type gateReader struct {
	started chan struct{}
	release chan struct{}
	r       io.Reader
	once    sync.Once
}

func (g *gateReader) Read(p []byte) (int, error) {
	g.once.Do(func() { close(g.started); <-g.release })
	return g.r.Read(p)
}

func TestUploadConcurrentAppend(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{})
	u, _ := s.NewUpload(t.Context(), "app")
	g := &gateReader{started: make(chan struct{}), release: make(chan struct{}), r: strings.NewReader("first")}
	done := make(chan error)
	go func() {
		_, err := s.AppendUpload(t.Context(), "app", u.ID, 0, g)
		done <- err
	}()
	<-g.started
	_, err := s.AppendUpload(t.Context(), "app", u.ID, 0, strings.NewReader("second"))
	wantErr(t, "concurrent append", err, ErrOffsetMismatch)
	close(g.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := s.CommitUpload(t.Context(), "app", u.ID, digestOf([]byte("first"))); err != nil {
		t.Fatal(err)
	}
}

func TestUploadParallelSessions(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{})
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			content := bytes.Repeat([]byte{byte(i)}, 100_000+i)
			u, err := s.NewUpload(t.Context(), "app")
			if err != nil {
				t.Error(err)
				return
			}
			for off := 0; off < len(content); off += 30_000 {
				end := min(off+30_000, len(content))
				if _, err := s.AppendUpload(t.Context(), "app", u.ID, int64(off), bytes.NewReader(content[off:end])); err != nil {
					t.Error(err)
					return
				}
			}
			if _, err := s.CommitUpload(t.Context(), "app", u.ID, digestOf(content)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
}

func TestUploadSurvivesRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openStore(t, Options{Dir: dir})
	u, _ := s.NewUpload(t.Context(), "app")
	appendChunks(t, s, "app", u.ID, []byte("before "), []byte("restart "))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openStore(t, Options{Dir: dir})
	got, err := s.GetUpload(t.Context(), "app", u.ID)
	if err != nil || got.Size != int64(len("before restart ")) {
		t.Fatalf("after restart: %+v, %v", got, err)
	}
	appendChunks(t, s, "app", u.ID, []byte("and after"))
	want := digestOf([]byte("before restart and after"))
	if _, err := s.CommitUpload(t.Context(), "app", u.ID, want); err != nil {
		t.Fatal(err)
	}
}

func TestUploadCrashMidChunk(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openStore(t, Options{Dir: dir})
	u, _ := s.NewUpload(t.Context(), "app")
	appendChunks(t, s, "app", u.ID, []byte("kept"))
	s.Close()
	// The process died while writing the next chunk: bytes on disk that
	// the session never accounted for.
	data := filepath.Join(dir, "uploads", u.ID)
	f, err := os.OpenFile(data, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("garbage from a cut-off chunk")
	f.Close()

	s = openStore(t, Options{Dir: dir})
	if fi, err := os.Stat(data); err != nil || fi.Size() != 4 {
		t.Fatalf("data not truncated on open: %v, %v", fi.Size(), err)
	}
	if got, err := s.GetUpload(t.Context(), "app", u.ID); err != nil || got.Size != 4 {
		t.Fatalf("GetUpload = %+v, %v", got, err)
	}
	appendChunks(t, s, "app", u.ID, []byte("+more"))
	// sha512 re-reads the file: it must see exactly the accounted bytes.
	want := FromBytes(SHA512, []byte("kept+more"))
	if _, err := s.CommitUpload(t.Context(), "app", u.ID, want); err != nil {
		t.Fatal(err)
	}
	if got := readBlob(t, s, want); string(got) != "kept+more" {
		t.Fatalf("content = %q", got)
	}
}

func TestUploadLostData(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openStore(t, Options{Dir: dir})
	u, _ := s.NewUpload(t.Context(), "app")
	appendChunks(t, s, "app", u.ID, []byte("will be lost"))
	s.Close()
	if err := os.Truncate(filepath.Join(dir, "uploads", u.ID), 3); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, Options{Dir: dir})
	_, err := s.GetUpload(t.Context(), "app", u.ID)
	wantErr(t, "GetUpload of broken session", err, ErrUploadUnknown)
}

func TestUploadExpiry(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openStore(t, Options{Dir: dir, UploadTTL: time.Hour})
	now := time.Now()
	s.now = func() time.Time { return now }
	stale, _ := s.NewUpload(t.Context(), "app")
	appendChunks(t, s, "app", stale.ID, []byte("old"))

	now = now.Add(50 * time.Minute)
	fresh, _ := s.NewUpload(t.Context(), "app")
	// Touching a session renews it.
	touched, _ := s.NewUpload(t.Context(), "app")
	appendChunks(t, s, "app", touched.ID, []byte("t"))

	now = now.Add(20 * time.Minute) // stale is 70 min old, the others 20
	_, err := s.GetUpload(t.Context(), "app", stale.ID)
	wantErr(t, "GetUpload expired", err, ErrUploadUnknown)
	for _, id := range []string{fresh.ID, touched.ID} {
		if _, err := s.GetUpload(t.Context(), "app", id); err != nil {
			t.Errorf("live session %s: %v", id, err)
		}
	}

	st, err := s.GC()
	if err != nil {
		t.Fatal(err)
	}
	if st.UploadsExpired != 1 {
		t.Errorf("UploadsExpired = %d, want 1", st.UploadsExpired)
	}
	_, err = s.AppendUpload(t.Context(), "app", stale.ID, 3, strings.NewReader("x"))
	wantErr(t, "AppendUpload expired", err, ErrUploadUnknown)
	if _, err := os.Stat(filepath.Join(dir, "uploads", stale.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("expired data left: %v", err)
	}
	if _, err := s.readUpload(stale.ID); !errors.Is(err, ErrUploadUnknown) {
		t.Errorf("expired record left: %v", err)
	}
}

func TestSHA256StateRoundTrip(t *testing.T) {
	t.Parallel()
	// The resume path depends on this; fail loudly if the stdlib changes.
	h := sha256.New()
	h.Write([]byte("part"))
	st, err := sha256State(h)
	if err != nil {
		t.Fatal(err)
	}
	h2, err := restoreSHA256(st)
	if err != nil {
		t.Fatal(err)
	}
	h.Write([]byte("rest"))
	h2.Write([]byte("rest"))
	if !bytes.Equal(h.Sum(nil), h2.Sum(nil)) {
		t.Fatal("restored state differs")
	}
	if _, err := restoreSHA256([]byte("junk")); err == nil {
		t.Fatal("junk state accepted")
	}
}
