package cache

import (
	"os"
	"slices"
	"strings"
	"testing"

	badger "github.com/dgraph-io/badger/v4"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// damageRecord makes repo's record of manifest d read back empty, as
// badger answers a record whose value log a crash cut short.
func damageRecord(t *testing.T, s *Store, repo string, d Digest) {
	t.Helper()
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(manLinkKey(repo, d), nil) }); err != nil {
		t.Fatal(err)
	}
}

// TestReferrersDamaged: a list of referrers holding one whose record does
// not read back and one whose file is gone answers the others (counted in
// manifests, so pages stay full) and logs the two at error level, as
// their GETs answer them unknown and log them.
func TestReferrersDamaged(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zapcore.ErrorLevel)
	s := openStore(t, Options{Logger: zap.New(core)})
	subject := putManifest(t, s, "app", "image", Digest{}, "latest")
	var refs []Manifest
	for _, n := range []string{"a", "b", "c", "d"} {
		refs = append(refs, putManifest(t, s, "app", n, subject.Digest))
	}
	slices.SortFunc(refs, func(a, b Manifest) int { return strings.Compare(a.Digest.String(), b.Digest.String()) })
	damageRecord(t, s, "app", refs[0].Digest)
	if err := os.Remove(s.blobPath(refs[2].Digest)); err != nil {
		t.Fatal(err)
	}
	var got []Digest
	after := ""
	for {
		page, more, err := s.Referrers(t.Context(), "app", subject.Digest, after, 1)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range page {
			got = append(got, m.Digest)
		}
		if !more || len(page) == 0 {
			break
		}
		after = page[len(page)-1].Digest.String()
	}
	if want := []Digest{refs[1].Digest, refs[3].Digest}; !slices.Equal(got, want) {
		t.Errorf("referrers listed a page of one at a time: %v; want %v", got, want)
	}
	for _, d := range []Digest{refs[0].Digest, refs[2].Digest} {
		if logs.FilterField(zap.String("digest", d.String())).Len() == 0 {
			t.Errorf("damaged referrer %s left out without an error log", d)
		}
	}
}

// TestDeleteDamagedManifest: a DELETE of a manifest whose record does not
// read back removes its referrer entry too, as a DELETE of a whole one
// does: nothing of it stays in the metadata.
func TestDeleteDamagedManifest(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{})
	subject := putManifest(t, s, "app", "image", Digest{}, "latest")
	ref := putManifest(t, s, "app", "sig", subject.Digest, "sig")
	damageRecord(t, s, "app", ref.Digest)
	if err := s.DeleteManifest(t.Context(), "app", ref.Digest); err != nil {
		t.Fatal(err)
	}
	err := s.db.View(func(txn *badger.Txn) error {
		for _, k := range [][]byte{refKey("app", subject.Digest, ref.Digest), manLinkKey("app", ref.Digest), tagKey("app", "sig")} {
			if ok, err := exists(txn, k); err != nil || ok {
				t.Errorf("after the delete of the damaged manifest, %q is still there (%v)", k, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
