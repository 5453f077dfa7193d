package cache

import (
	"errors"
	"slices"
	"testing"
	"time"
)

// TestListings: the listings a migration copies from name every blob
// file, every link and manifest of a repository (and no other's), and
// every auth record with its key.
func TestListings(t *testing.T) {
	s := openStore(t, Options{})
	ctx := t.Context()
	a := pushBlobs(t, s, "a", "config-a", "layer-a")
	b := pushBlobs(t, s, "a/b", "layer-b")
	ma := pushImage(t, s, "a", Digest{}, a[0], a[1])
	mb := pushImage(t, s, "a/b", ma, b[0])

	links, err := s.BlobLinks(ctx, "a")
	if err != nil || !slices.Equal(links, sortedDigests(a...)) {
		t.Fatalf("BlobLinks(a) = %v, %v; want %v", links, err, sortedDigests(a...))
	}
	if ms, err := s.ManifestDigests(ctx, "a/b"); err != nil || !slices.Equal(ms, []Digest{mb}) {
		t.Fatalf("ManifestDigests(a/b) = %v, %v", ms, err)
	}
	if _, err := s.BlobLinks(ctx, "none"); !errors.Is(err, ErrRepoUnknown) {
		t.Fatalf("BlobLinks(none): %v", err)
	}
	if _, err := s.ManifestDigests(ctx, "x\x00y"); !errors.Is(err, ErrNameInvalid) {
		t.Fatalf("ManifestDigests with NUL: %v", err)
	}

	var files []Digest
	err = s.EachBlob(ctx, func(bi BlobInfo) error {
		files = append(files, bi.Digest)
		return nil
	})
	// Blob files hold the layers and configs and the manifests' bytes.
	if want := sortedDigests(a[0], a[1], b[0], ma, mb); err != nil || !slices.Equal(files, want) {
		t.Fatalf("EachBlob = %v, %v; want %v", files, err, want)
	}
	stop := errors.New("stop")
	n := 0
	if err := s.EachBlob(ctx, func(BlobInfo) error { n++; return stop }); !errors.Is(err, stop) || n != 1 {
		t.Fatalf("EachBlob did not stop at fn's error: %v after %d", err, n)
	}

	exp := time.Now().Add(time.Hour).Truncate(time.Second)
	if err := s.CreateSession("s1", []byte("rec"), exp); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateAPIKey("k1", []byte("key")); err != nil {
		t.Fatal(err)
	}
	secret, err := s.AuthSecret("session", 32)
	if err != nil {
		t.Fatal(err)
	}
	ss, err := s.Sessions()
	if err != nil || len(ss) != 1 || ss[0].ID != "s1" || string(ss[0].Record) != "rec" || !ss[0].Expires.Equal(exp) {
		t.Fatalf("Sessions = %+v, %v", ss, err)
	}
	ks, err := s.APIKeyRecords()
	if err != nil || len(ks) != 1 || ks[0].ID != "k1" || string(ks[0].Record) != "key" || !ks[0].Expires.IsZero() {
		t.Fatalf("APIKeyRecords = %+v, %v", ks, err)
	}
	sec, err := s.AuthSecrets()
	if err != nil || len(sec) != 1 || sec[0].ID != "session" || string(sec[0].Record) != string(secret) {
		t.Fatalf("AuthSecrets = %+v, %v", sec, err)
	}
}

func sortedDigests(ds ...Digest) []Digest {
	out := slices.Clone(ds)
	slices.SortFunc(out, func(x, y Digest) int {
		if x.String() < y.String() {
			return -1
		}
		if x.String() > y.String() {
			return 1
		}
		return 0
	})
	return out
}
