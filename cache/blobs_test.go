package cache

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
)

func TestPutBlob(t *testing.T) {
	t.Parallel()
	content := []byte("hello, blob")
	good := digestOf(content)
	other := digestOf([]byte("something else"))
	tests := []struct {
		name    string
		want    Digest
		size    int64
		r       io.Reader
		wantErr error
	}{
		{"ok", good, int64(len(content)), bytes.NewReader(content), nil},
		{"unknown size", good, -1, bytes.NewReader(content), nil},
		{"empty", digestOf(nil), 0, bytes.NewReader(nil), nil},
		{"digest mismatch", other, int64(len(content)), bytes.NewReader(content), ErrDigestMismatch},
		{"too short", good, int64(len(content)) + 1, bytes.NewReader(content), ErrSizeMismatch},
		{"too long", good, int64(len(content)) - 1, bytes.NewReader(content), ErrSizeMismatch},
		{"reader fails", good, -1, iotest.TimeoutReader(bytes.NewReader(content)), iotest.ErrTimeout},
		{"invalid digest", Digest{Algorithm: SHA256, Hex: "../../../etc/passwd"}, -1, bytes.NewReader(content), ErrDigestInvalid},
		{"invalid algorithm", Digest{Algorithm: "../x", Hex: good.Hex}, -1, bytes.NewReader(content), ErrDigestInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			s := openStore(t, Options{Dir: dir})
			n, err := s.PutBlob(t.Context(), tt.want, tt.size, tt.r)
			wantErr(t, "PutBlob", err, tt.wantErr)
			if got := dirEntries(t, filepath.Join(dir, "tmp")); len(got) != 0 {
				t.Errorf("tmp/ not empty: %v", got)
			}
			if tt.wantErr != nil {
				if tt.want.Algorithm.HexLen() > 0 && len(tt.want.Hex) == tt.want.Algorithm.HexLen() {
					_, err := s.StatBlob(t.Context(), tt.want)
					wantErr(t, "StatBlob after failure", err, ErrBlobUnknown)
				}
				// Nothing became visible under the content's real digest either.
				_, err := s.StatBlob(t.Context(), good)
				wantErr(t, "StatBlob(good) after failure", err, ErrBlobUnknown)
				return
			}
			info, err := s.StatBlob(t.Context(), tt.want)
			if err != nil {
				t.Fatal(err)
			}
			if info.Size != n || info.Digest != tt.want {
				t.Errorf("StatBlob = %+v, PutBlob returned %d", info, n)
			}
			f, err := s.OpenBlob(t.Context(), tt.want)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if f.Size() != n {
				t.Errorf("OpenBlob Size = %d, want %d", f.Size(), n)
			}
			got, _ := io.ReadAll(f)
			want := content
			if tt.size == 0 {
				want = nil
			}
			if !bytes.Equal(got, want) {
				t.Errorf("content = %q, want %q", got, want)
			}
			hex := tt.want.Hex
			if _, err := os.Stat(filepath.Join(dir, "blobs", "sha256", hex[:2], hex)); err != nil {
				t.Errorf("blob not at its path: %v", err)
			}
		})
	}
}

func TestPutBlobExisting(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openStore(t, Options{Dir: dir})
	content := []byte("twice")
	d := mustPut(t, s, content)
	// Same bytes again: accepted and verified.
	if n, err := s.PutBlob(t.Context(), d, -1, bytes.NewReader(content)); err != nil || n != int64(len(content)) {
		t.Fatalf("second PutBlob = %d, %v", n, err)
	}
	// Other bytes under an existing digest: still refused.
	_, err := s.PutBlob(t.Context(), d, -1, strings.NewReader("not it"))
	wantErr(t, "PutBlob wrong bytes", err, ErrDigestMismatch)
	f, err := s.OpenBlob(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got, _ := io.ReadAll(f); !bytes.Equal(got, content) {
		t.Fatalf("content = %q", got)
	}
	if got := dirEntries(t, filepath.Join(dir, "tmp")); len(got) != 0 {
		t.Errorf("tmp/ not empty: %v", got)
	}
}

func TestPutBlobSHA512(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{})
	content := bytes.Repeat([]byte("512"), 1000)
	d := FromBytes(SHA512, content)
	if _, err := s.PutBlob(t.Context(), d, int64(len(content)), bytes.NewReader(content)); err != nil {
		t.Fatal(err)
	}
	if info, err := s.StatBlob(t.Context(), d); err != nil || info.Size != int64(len(content)) {
		t.Fatalf("StatBlob = %+v, %v", info, err)
	}
}

func TestUnknownBlob(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{})
	d := digestOf([]byte("absent"))
	_, err := s.StatBlob(t.Context(), d)
	wantErr(t, "StatBlob", err, ErrBlobUnknown)
	_, err = s.OpenBlob(t.Context(), d)
	wantErr(t, "OpenBlob", err, ErrBlobUnknown)
	bad := Digest{Algorithm: SHA256, Hex: strings.Repeat("A", 64)}
	_, err = s.StatBlob(t.Context(), bad)
	wantErr(t, "StatBlob(bad)", err, ErrBlobUnknown)
	_, err = s.OpenBlob(t.Context(), Digest{})
	wantErr(t, "OpenBlob(zero)", err, ErrBlobUnknown)
}

func TestBlobLinks(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{})
	d := mustPut(t, s, []byte("layer"))
	for _, repo := range []string{"a", "a/b", "a-b"} {
		mustLink(t, s, repo, d)
	}
	mustLink(t, s, "a", d) // linking twice is fine

	if err := s.UnlinkBlob(t.Context(), "a", d); err != nil {
		t.Fatal(err)
	}
	_, err := s.HasBlob(t.Context(), "a", d)
	wantErr(t, "HasBlob(a) after unlink", err, ErrBlobUnknown)
	for _, repo := range []string{"a/b", "a-b"} {
		if info, err := s.HasBlob(t.Context(), repo, d); err != nil || info.Size != 5 {
			t.Errorf("HasBlob(%s) = %+v, %v", repo, info, err)
		}
	}
	if _, err := s.StatBlob(t.Context(), d); err != nil {
		t.Errorf("content gone after one unlink: %v", err)
	}
	wantErr(t, "UnlinkBlob twice", s.UnlinkBlob(t.Context(), "a", d), ErrBlobUnknown)
	wantErr(t, "UnlinkBlob never linked", s.UnlinkBlob(t.Context(), "c", d), ErrBlobUnknown)

	repos, err := s.ReposWithBlob(t.Context(), d, 0)
	if err != nil || strings.Join(repos, ",") != "a-b,a/b" {
		t.Errorf("ReposWithBlob = %q, %v", repos, err)
	}
	repos, err = s.ReposWithBlob(t.Context(), d, 1)
	if err != nil || strings.Join(repos, ",") != "a-b" {
		t.Errorf("ReposWithBlob(limit 1) = %q, %v", repos, err)
	}

	absent := digestOf([]byte("absent"))
	wantErr(t, "LinkBlob absent", s.LinkBlob(t.Context(), "a", absent), ErrBlobUnknown)
	_, err = s.HasBlob(t.Context(), "a/b", absent)
	wantErr(t, "HasBlob absent", err, ErrBlobUnknown)
	wantErr(t, "LinkBlob bad name", s.LinkBlob(t.Context(), "a\x00b", d), ErrNameInvalid)
	wantErr(t, "LinkBlob empty name", s.LinkBlob(t.Context(), "", d), ErrNameInvalid)

	// The repository exists from its first link, even with no tags.
	tags, more, err := s.Tags(t.Context(), "a-b", "", -1)
	if err != nil || len(tags) != 0 || more {
		t.Errorf("Tags(a-b) = %q, %v, %v", tags, more, err)
	}
}
