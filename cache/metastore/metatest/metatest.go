// Package metatest is the contract every metastore.Store keeps, as one
// suite a backend runs against itself:
//
//	func TestContract(t *testing.T) { metatest.Run(t, openBackend) }
//
// It speaks only through the metastore interfaces, with times it makes
// itself (the store records the caller's times), so the same assertions
// hold badger and PostgreSQL to the same behaviour, concurrency included:
// goroutines stand in for replicas.
package metatest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/metastore"
)

// Run runs the contract against fresh, empty stores from open, one per
// subtest.
func Run(t *testing.T, open func(t *testing.T) metastore.Store) {
	tests := []struct {
		name string
		run  func(t *testing.T, s metastore.Store)
	}{
		{"RecordBlob", testRecordBlob},
		{"LinkBlob", testLinkBlob},
		{"RenewBlobLink", testRenewBlobLink},
		{"UnlinkBlobAndReposWithBlob", testUnlinkBlob},
		{"PutManifestExactBytes", testPutManifest},
		{"PutManifestRefused", testPutManifestRefused},
		{"PutManifestAgainMovesReferrer", testPutManifestAgain},
		{"PutManifestLinkedStill", testPutManifestLinked},
		{"CreateManifest", testCreateManifest},
		{"CreateManifestRefused", testCreateManifestRefused},
		{"Referrers", testReferrers},
		{"DeleteManifest", testDeleteManifest},
		{"DeleteManifestManyTags", testDeleteManifestManyTags},
		{"MoveTag", testMoveTag},
		{"DeleteTagAndFetched", testDeleteTag},
		{"TagsPaging", testTagsPaging},
		{"RepositoriesPaging", testRepositoriesPaging},
		{"PagingStableWhileInserting", testPagingWhileInserting},
		{"HostileNames", testHostileNames},
		{"Uploads", testUploads},
		{"UploadQuota", testUploadQuota},
		{"ExpiredUploads", testExpiredUploads},
		{"ConcurrentTagMoves", testConcurrentTagMoves},
		{"ConcurrentManifestPutsOneTag", testConcurrentPuts},
		{"ConcurrentCreatesOneTag", testConcurrentCreates},
		{"ConcurrentCreateAndRetype", testConcurrentCreateRetype},
		{"ConcurrentTagsOfOneManifest", testConcurrentTagsOfOneManifest},
		{"ConcurrentUploadAdvance", testConcurrentAdvance},
		{"ConcurrentUploadQuota", testConcurrentQuota},
		{"ConcurrentTagMoveAndManifestDelete", testMoveRacesDelete},
		{"GCUnreferencedLinks", testUnreferencedLinks},
		{"GCDropLinksChecksAgain", testDropLinksChecksAgain},
		{"GCBlobs", testGCBlobs},
		{"GCMarkChecksAgain", testMarkChecksAgain},
		{"GCMarkRacesLink", testMarkRacesLink},
	}
	for _, tt := range mirrorCacheTests() {
		tests = append(tests, struct {
			name string
			run  func(t *testing.T, s metastore.Store)
		}(tt))
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.run(t, open(t)) })
	}
}

// t0 is the suite's epoch; times are t0 plus minutes, so a grace period
// is a matter of arithmetic, not of waiting.
var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func at(min int) time.Time { return t0.Add(time.Duration(min) * time.Minute) }

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

// dg is a distinct valid digest per name.
func dg(name string) metastore.Digest {
	return blobstore.FromBytes(blobstore.SHA256, []byte(name))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s = %v, want %v", what, err, want)
	}
}

// blob records and links blob name into repo at minute min.
func link(t *testing.T, s metastore.Store, repo, name string, min int) metastore.Digest {
	t.Helper()
	d := dg(name)
	if _, err := s.RecordBlob(ctx(t), d, int64(len(name)), at(min)); err != nil {
		t.Fatalf("RecordBlob %s: %v", name, err)
	}
	if err := s.LinkBlob(ctx(t), repo, d, at(min)); err != nil {
		t.Fatalf("LinkBlob %s %s: %v", repo, name, err)
	}
	return d
}

// manifest builds a manifest whose bytes name refs, and its body.
func manifest(name string, subject metastore.Digest, refs ...metastore.Digest) (metastore.Manifest, []byte) {
	var b strings.Builder
	fmt.Fprintf(&b, `{"schemaVersion":2,"name":%q,"refs":[`, name)
	for i, r := range refs {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%q", r)
	}
	b.WriteString("]}")
	body := []byte(b.String())
	return metastore.Manifest{
		Digest:    blobstore.FromBytes(blobstore.SHA256, body),
		MediaType: "application/vnd.oci.image.manifest.v1+json",
		Subject:   subject,
		Refs:      refs,
	}, body
}

func put(t *testing.T, s metastore.Store, repo string, m metastore.Manifest, body []byte, tags ...string) {
	t.Helper()
	if err := s.PutManifest(ctx(t), repo, m, body, tags); err != nil {
		t.Fatalf("PutManifest %s@%s: %v", repo, m.Digest, err)
	}
}

func tagOf(t *testing.T, s metastore.Store, repo, tag string) metastore.TagInfo {
	t.Helper()
	ti, err := s.Tag(ctx(t), repo, tag)
	if err != nil {
		t.Fatalf("Tag %s:%s: %v", repo, tag, err)
	}
	return ti
}

func allRepos(t *testing.T, s metastore.Store) []string {
	t.Helper()
	p, err := s.Repositories(ctx(t), "", -1)
	must(t, err)
	return p.Names
}

func allTags(t *testing.T, s metastore.Store, repo string) []string {
	t.Helper()
	p, err := s.Tags(ctx(t), repo, "", -1)
	must(t, err)
	return p.Names
}

func testRecordBlob(t *testing.T, s metastore.Store) {
	d := dg("a")
	wantErr(t, "Blob of an unknown digest", func() error { _, err := s.Blob(ctx(t), d); return err }(), metastore.ErrBlobUnknown)
	r, err := s.RecordBlob(ctx(t), d, 10, at(0))
	must(t, err)
	if r.Digest != d || r.Size != 10 || !r.Created.Equal(at(0)) || !r.Touched.Equal(at(0)) {
		t.Fatalf("first record = %+v", r)
	}
	// Again later: touched moves, created stays.
	r, err = s.RecordBlob(ctx(t), d, 10, at(5))
	must(t, err)
	if !r.Created.Equal(at(0)) || !r.Touched.Equal(at(5)) {
		t.Fatalf("after a second record = %+v", r)
	}
	// Again with an older time (another replica's late call): never back.
	if r, err = s.RecordBlob(ctx(t), d, 10, at(2)); err != nil || !r.Touched.Equal(at(5)) {
		t.Fatalf("an older record moved Touched: %+v %v", r, err)
	}
	_, err = s.RecordBlob(ctx(t), d, 11, at(6))
	wantErr(t, "RecordBlob with another size", err, metastore.ErrSizeMismatch)
	if r, err = s.Blob(ctx(t), d); err != nil || r.Size != 10 || !r.Touched.Equal(at(5)) {
		t.Fatalf("Blob = %+v %v", r, err)
	}
	_, err = s.RecordBlob(ctx(t), metastore.Digest{Algorithm: "sha256", Hex: "../x"}, 1, at(0))
	wantErr(t, "RecordBlob of an invalid digest", err, metastore.ErrDigestInvalid)
	_, err = s.RecordBlob(ctx(t), dg("neg"), -1, at(0))
	if err == nil {
		t.Fatal("RecordBlob with a negative size succeeded")
	}
	// An empty blob is a blob.
	if _, err := s.RecordBlob(ctx(t), dg(""), 0, at(0)); err != nil {
		t.Fatalf("RecordBlob of an empty blob: %v", err)
	}
}

func testLinkBlob(t *testing.T, s metastore.Store) {
	d := dg("layer")
	wantErr(t, "LinkBlob of an unrecorded blob", s.LinkBlob(ctx(t), "r", d, at(0)), metastore.ErrBlobUnknown)
	if got := allRepos(t, s); len(got) != 0 {
		t.Fatalf("a refused link made repositories %q", got)
	}
	link(t, s, "r", "layer", 1)
	l, b, err := s.BlobLink(ctx(t), "r", d)
	must(t, err)
	if l.Repo != "r" || l.Digest != d || !l.Linked.Equal(at(1)) || b.Digest != d || b.Size != int64(len("layer")) {
		t.Fatalf("BlobLink = %+v %+v", l, b)
	}
	if got := allRepos(t, s); !slices.Equal(got, []string{"r"}) {
		t.Fatalf("repositories = %q, want [r]", got)
	}
	// Linking again renews, never back.
	must(t, s.LinkBlob(ctx(t), "r", d, at(9)))
	must(t, s.LinkBlob(ctx(t), "r", d, at(3)))
	if l, _, _ := s.BlobLink(ctx(t), "r", d); !l.Linked.Equal(at(9)) {
		t.Fatalf("link time = %s, want minute 9", l.Linked)
	}
	_, _, err = s.BlobLink(ctx(t), "other", d)
	wantErr(t, "BlobLink in a repository that does not link it", err, metastore.ErrBlobUnknown)
	// A repository with links and no tags lists none.
	if tags := allTags(t, s, "r"); len(tags) != 0 {
		t.Fatalf("tags = %q", tags)
	}
}

func testRenewBlobLink(t *testing.T, s metastore.Store) {
	d := link(t, s, "r", "b", 0)
	ok, err := s.RenewBlobLink(ctx(t), "r", d, at(10), at(-1))
	must(t, err)
	if l, _, _ := s.BlobLink(ctx(t), "r", d); !ok || !l.Linked.Equal(at(0)) {
		t.Fatalf("a young link was renewed: %v %s", ok, l.Linked)
	}
	ok, err = s.RenewBlobLink(ctx(t), "r", d, at(10), at(5))
	must(t, err)
	if l, _, _ := s.BlobLink(ctx(t), "r", d); !ok || !l.Linked.Equal(at(10)) {
		t.Fatalf("an old link was not renewed: %v %s", ok, l.Linked)
	}
	must(t, s.UnlinkBlob(ctx(t), "r", d))
	ok, err = s.RenewBlobLink(ctx(t), "r", d, at(20), at(30))
	must(t, err)
	if ok {
		t.Fatal("RenewBlobLink of a removed link reports it linked")
	}
	if _, _, err := s.BlobLink(ctx(t), "r", d); !errors.Is(err, metastore.ErrBlobUnknown) {
		t.Fatalf("a renewal made a removed link again: %v", err)
	}
}

func testUnlinkBlob(t *testing.T, s metastore.Store) {
	d := link(t, s, "c", "shared", 0)
	link(t, s, "a", "shared", 0)
	link(t, s, "b", "shared", 0)
	link(t, s, "b", "other", 0)
	got, err := s.ReposWithBlob(ctx(t), d, 0)
	must(t, err)
	if !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("ReposWithBlob = %q", got)
	}
	if got, _ = s.ReposWithBlob(ctx(t), d, 2); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("ReposWithBlob limit 2 = %q", got)
	}
	must(t, s.UnlinkBlob(ctx(t), "b", d))
	wantErr(t, "UnlinkBlob again", s.UnlinkBlob(ctx(t), "b", d), metastore.ErrBlobUnknown)
	if got, _ = s.ReposWithBlob(ctx(t), d, -1); !slices.Equal(got, []string{"a", "c"}) {
		t.Fatalf("ReposWithBlob after unlink = %q", got)
	}
	// The blob stays for the others, and b keeps its other link.
	if _, _, err := s.BlobLink(ctx(t), "a", d); err != nil {
		t.Fatalf("a lost its link: %v", err)
	}
	if _, _, err := s.BlobLink(ctx(t), "b", dg("other")); err != nil {
		t.Fatalf("b lost its other link: %v", err)
	}
	if got, err := s.ReposWithBlob(ctx(t), dg("nobody"), 0); err != nil || len(got) != 0 {
		t.Fatalf("ReposWithBlob of an unlinked digest = %q %v", got, err)
	}
}

// hostileBody is manifest bytes no backend may treat as text.
var hostileBody = []byte("{\"a\":\"\x00\xff\xfe\u00e9\"}\r\n\x00")

func testPutManifest(t *testing.T, s metastore.Store) {
	m := metastore.Manifest{
		Digest:       blobstore.FromBytes(blobstore.SHA512, hostileBody),
		MediaType:    "application/vnd.example+json; charset=ünï",
		Subject:      dg("subject"),
		ArtifactType: "application/x.test",
		Annotations:  map[string]string{"k\x00ey": "v\x00al\xff", "ü": "日本", "empty": ""},
		Refs:         []metastore.Digest{dg("l1"), dg("l2"), dg("l1")},
	}
	put(t, s, "repo", m, hostileBody, "v1", "latest")
	got, body, err := s.ManifestBody(ctx(t), "repo", m.Digest)
	must(t, err)
	if !bytes.Equal(body, hostileBody) {
		t.Fatalf("bytes = %q, want %q", body, hostileBody)
	}
	if got.Digest != m.Digest || got.MediaType != m.MediaType || got.Size != int64(len(hostileBody)) ||
		got.Subject != m.Subject || got.ArtifactType != m.ArtifactType || !maps.Equal(got.Annotations, m.Annotations) {
		t.Fatalf("record = %+v\nwant   %+v", got, m)
	}
	slices.SortFunc(got.Refs, func(a, b metastore.Digest) int { return strings.Compare(a.String(), b.String()) })
	want := []metastore.Digest{dg("l1"), dg("l2")}
	slices.SortFunc(want, func(a, b metastore.Digest) int { return strings.Compare(a.String(), b.String()) })
	if !slices.Equal(got.Refs, want) {
		t.Fatalf("refs = %v, want the set %v", got.Refs, want)
	}
	if stat, err := s.Manifest(ctx(t), "repo", m.Digest); err != nil || stat.Size != got.Size || stat.MediaType != m.MediaType {
		t.Fatalf("Manifest = %+v %v", stat, err)
	}
	for _, tag := range []string{"v1", "latest"} {
		if ti := tagOf(t, s, "repo", tag); ti.Digest != m.Digest || !ti.Fetched.IsZero() {
			t.Fatalf("tag %s = %+v", tag, ti)
		}
	}
	if got := allRepos(t, s); !slices.Equal(got, []string{"repo"}) {
		t.Fatalf("repositories = %q: a manifest makes its repository", got)
	}
	if _, err := s.Manifest(ctx(t), "other", m.Digest); !errors.Is(err, metastore.ErrManifestUnknown) {
		t.Fatalf("Manifest in another repository = %v", err)
	}
	// No annotations reads as none, whichever way it was empty.
	m2, b2 := manifest("plain", metastore.Digest{})
	put(t, s, "repo", m2, b2)
	if got, _ := s.Manifest(ctx(t), "repo", m2.Digest); len(got.Annotations) != 0 || !got.Subject.IsZero() || len(got.Refs) != 0 {
		t.Fatalf("plain manifest = %+v", got)
	}
}

// testCreateManifest: a create-only put of a new manifest and new tags
// is a put; done again, or over tags that point at its manifest already,
// it changes nothing a pull sees and keeps the tags' fetch times.
func testCreateManifest(t *testing.T, s metastore.Store) {
	m, body := manifest("m", dg("subject"), dg("layer"))
	must(t, s.CreateManifest(ctx(t), "r", m, body, []string{"v1", "latest", "v1"}))
	got, b, err := s.ManifestBody(ctx(t), "r", m.Digest)
	must(t, err)
	if !bytes.Equal(b, body) || got.MediaType != m.MediaType || got.Subject != m.Subject || len(got.Refs) != 1 {
		t.Fatalf("created manifest = %+v %q", got, b)
	}
	if refs, _, err := s.Referrers(ctx(t), "r", m.Subject, "", -1); err != nil || len(refs) != 1 {
		t.Fatalf("referrers after a create = %v %v", refs, err)
	}
	for _, tag := range []string{"v1", "latest"} {
		if ti := tagOf(t, s, "r", tag); ti.Digest != m.Digest {
			t.Fatalf("tag %s = %+v", tag, ti)
		}
	}
	must(t, s.SetTagFetched(ctx(t), "r", "v1", at(3)))
	// Again, with one tag more: the tags there stay, the new one is made.
	must(t, s.CreateManifest(ctx(t), "r", m, body, []string{"v1", "v1.0"}))
	if ti := tagOf(t, s, "r", "v1"); ti.Digest != m.Digest || !ti.Fetched.Equal(at(3)) {
		t.Fatalf("tag v1 after a create again = %+v, want its fetch time kept", ti)
	}
	if ti := tagOf(t, s, "r", "v1.0"); ti.Digest != m.Digest {
		t.Fatalf("tag v1.0 = %+v", ti)
	}
	// A tag a plain put points at the manifest counts as at it.
	m2, body2 := manifest("m2", metastore.Digest{})
	put(t, s, "r", m2, body2, "other")
	must(t, s.CreateManifest(ctx(t), "r", m2, body2, []string{"other"}))
	if got := allTags(t, s, "r"); !slices.Equal(got, []string{"latest", "other", "v1", "v1.0"}) {
		t.Fatalf("tags = %q", got)
	}
	// Refused input is refused as PutManifest refuses it.
	wantErr(t, "CreateManifest with a NUL in a tag",
		s.CreateManifest(ctx(t), "r", m, body, []string{"b\x00ad"}), metastore.ErrNameInvalid)
	wrong := m
	wrong.Digest = dg("not these bytes")
	wantErr(t, "CreateManifest of a digest of other bytes",
		s.CreateManifest(ctx(t), "r", wrong, body, nil), metastore.ErrDigestMismatch)
}

// testCreateManifestRefused: a create-only put that would move a tag, or
// give a manifest the repository holds another media type, is refused
// with its own error, and changes nothing: not its manifest, not its
// other tags, not the referrers.
func testCreateManifestRefused(t *testing.T, s metastore.Store) {
	rel, relBody := manifest("release", metastore.Digest{})
	put(t, s, "r", rel, relBody, "v1")
	must(t, s.SetTagFetched(ctx(t), "r", "v1", at(1)))
	evil, evilBody := manifest("evil", dg("subject"), dg("layer"))
	for _, tags := range [][]string{{"v1"}, {"new", "v1"}, {"v1", "zzz"}} {
		err := s.CreateManifest(ctx(t), "r", evil, evilBody, tags)
		wantErr(t, fmt.Sprintf("CreateManifest over a released tag (tags %q)", tags), err, metastore.ErrTagMoved)
		if ti := tagOf(t, s, "r", "v1"); ti.Digest != rel.Digest || !ti.Fetched.Equal(at(1)) {
			t.Fatalf("a refused create moved v1: %+v", ti)
		}
		if _, err := s.Manifest(ctx(t), "r", evil.Digest); !errors.Is(err, metastore.ErrManifestUnknown) {
			t.Fatalf("a refused create left its manifest: %v", err)
		}
		if got := allTags(t, s, "r"); !slices.Equal(got, []string{"v1"}) {
			t.Fatalf("a refused create left tags %q", got)
		}
		if refs, _, err := s.Referrers(ctx(t), "r", evil.Subject, "", -1); err != nil || len(refs) != 0 {
			t.Fatalf("a refused create left a referrer: %v %v", refs, err)
		}
	}
	// A refused create in a repository of its own makes no repository.
	put(t, s, "other", rel, relBody, "v1")
	wantErr(t, "CreateManifest over a tag of another repository's",
		s.CreateManifest(ctx(t), "other", evil, evilBody, []string{"v1"}), metastore.ErrTagMoved)
	if got := allRepos(t, s); !slices.Equal(got, []string{"other", "r"}) {
		t.Fatalf("repositories = %q", got)
	}

	// The same bytes under another media type: a retype.
	retyped := rel
	retyped.MediaType = "application/vnd.oci.image.index.v1+json"
	for _, tags := range [][]string{nil, {"v1"}, {"fresh"}} {
		err := s.CreateManifest(ctx(t), "r", retyped, relBody, tags)
		wantErr(t, fmt.Sprintf("CreateManifest under another media type (tags %q)", tags), err, metastore.ErrManifestRetyped)
		if got, err := s.Manifest(ctx(t), "r", rel.Digest); err != nil || got.MediaType != rel.MediaType {
			t.Fatalf("a refused retype changed the manifest: %+v %v", got, err)
		}
		if got := allTags(t, s, "r"); !slices.Equal(got, []string{"v1"}) {
			t.Fatalf("a refused retype left tags %q", got)
		}
	}
	// In a repository that does not hold it, the type is its own.
	must(t, s.CreateManifest(ctx(t), "third", retyped, relBody, []string{"v1"}))
	if got, err := s.Manifest(ctx(t), "third", rel.Digest); err != nil || got.MediaType != retyped.MediaType {
		t.Fatalf("manifest in a third repository = %+v %v", got, err)
	}
	// PutManifest, the update, still moves and retypes.
	put(t, s, "r", retyped, relBody)
	put(t, s, "r", evil, evilBody, "v1")
	if got := tagOf(t, s, "r", "v1").Digest; got != evil.Digest {
		t.Fatalf("PutManifest did not move v1: %s", got)
	}
}

func testPutManifestRefused(t *testing.T, s metastore.Store) {
	m, body := manifest("m", metastore.Digest{})
	wrong := m
	wrong.Digest = dg("not these bytes")
	for name, err := range map[string]error{
		"digest of other bytes": s.PutManifest(ctx(t), "r", wrong, body, []string{"t"}),
		"invalid digest":        s.PutManifest(ctx(t), "r", metastore.Manifest{Digest: metastore.Digest{Algorithm: "md5", Hex: "00"}}, body, nil),
		"invalid subject": s.PutManifest(ctx(t), "r", metastore.Manifest{Digest: m.Digest,
			Subject: metastore.Digest{Algorithm: "sha256", Hex: "zz"}}, body, nil),
		"invalid ref": s.PutManifest(ctx(t), "r", metastore.Manifest{Digest: m.Digest,
			Refs: []metastore.Digest{{Algorithm: "sha256", Hex: "'; DROP TABLE manifests; --"}}}, body, nil),
		"NUL in a tag":          s.PutManifest(ctx(t), "r", m, body, []string{"ok", "b\x00ad"}),
		"NUL in the media type": s.PutManifest(ctx(t), "r", metastore.Manifest{Digest: m.Digest, MediaType: "a\x00b"}, body, nil),
	} {
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if got := allRepos(t, s); len(got) != 0 {
		t.Fatalf("refused puts left repositories %q", got)
	}
	if _, err := s.Manifest(ctx(t), "r", m.Digest); !errors.Is(err, metastore.ErrManifestUnknown) {
		t.Fatalf("a refused put left its manifest: %v", err)
	}
}

// testPutManifestLinked: a push's blobs, found linked before its put
// (Manifest.Linked), must still be linked when the put commits; a link
// GC dropped in between refuses the put with ErrBlobUnknown, and nothing
// of it is stored, for either kind of put. Refs not in Linked (a mirror's
// manifest, stored before its blobs) need no link.
func testPutManifestLinked(t *testing.T, s metastore.Store) {
	layer := link(t, s, "r", "layer", 0)
	config := link(t, s, "r", "config", 0)
	m, body := manifest("pushed", metastore.Digest{}, config, layer)
	m.Linked = []metastore.Digest{config, layer}
	put(t, s, "r", m, body, "v1")
	must(t, s.UnlinkBlob(ctx(t), "r", layer))
	for _, createOnly := range []bool{false, true} {
		m2, body2 := manifest(fmt.Sprint("pushed after the drop ", createOnly), metastore.Digest{}, config, layer)
		m2.Linked = []metastore.Digest{config, layer}
		putOrCreate := s.PutManifest
		if createOnly {
			putOrCreate = s.CreateManifest
		}
		err := putOrCreate(ctx(t), "r", m2, body2, []string{"v2"})
		wantErr(t, fmt.Sprintf("put (create only: %v) over a dropped link", createOnly), err, metastore.ErrBlobUnknown)
		if _, err := s.Manifest(ctx(t), "r", m2.Digest); !errors.Is(err, metastore.ErrManifestUnknown) {
			t.Fatalf("the refused put left its manifest: %v", err)
		}
		if _, err := s.Tag(ctx(t), "r", "v2"); !errors.Is(err, metastore.ErrTagUnknown) {
			t.Fatalf("the refused put left its tag: %v", err)
		}
	}
	mirrored, mbody := manifest("mirrored", metastore.Digest{}, dg("not here yet"))
	put(t, s, "r", mirrored, mbody, "m")
}

func testPutManifestAgain(t *testing.T, s metastore.Store) {
	subA, subB := dg("A"), dg("B")
	m, body := manifest("sig", subA)
	put(t, s, "r", m, body, "t")
	m.Subject = subB
	put(t, s, "r", m, body) // no tags: the existing one stays
	if refs, _, _ := s.Referrers(ctx(t), "r", subA, "", -1); len(refs) != 0 {
		t.Fatalf("referrers of the old subject = %v", refs)
	}
	if refs, _, _ := s.Referrers(ctx(t), "r", subB, "", -1); len(refs) != 1 || refs[0].Digest != m.Digest {
		t.Fatalf("referrers of the new subject = %v", refs)
	}
	if ti := tagOf(t, s, "r", "t"); ti.Digest != m.Digest {
		t.Fatalf("tag after a re-put = %s", ti.Digest)
	}
}

func testReferrers(t *testing.T, s metastore.Store) {
	sub := dg("image")
	var want []metastore.Digest
	for i := range 5 {
		m, body := manifest(fmt.Sprint("sig", i), sub)
		m.ArtifactType = fmt.Sprint("type/", i)
		m.Annotations = map[string]string{"i": fmt.Sprint(i)}
		put(t, s, "r", m, body)
		want = append(want, m.Digest)
	}
	other, body := manifest("elsewhere", sub)
	put(t, s, "other", other, body)
	refs, more, err := s.Referrers(ctx(t), "r", sub, "", -1)
	must(t, err)
	if more {
		t.Fatal("referrers: more after all of them")
	}
	var got []metastore.Digest
	for _, r := range refs {
		got = append(got, r.Digest)
		if !strings.HasPrefix(r.ArtifactType, "type/") || r.Annotations["i"] == "" || r.Size == 0 {
			t.Fatalf("referrer record = %+v", r)
		}
	}
	slices.SortFunc(want, func(a, b metastore.Digest) int { return strings.Compare(a.String(), b.String()) })
	if !slices.Equal(got, want) {
		t.Fatalf("referrers = %v, want by digest %v", got, want)
	}
	// Paged: two at a time after the digest given, as the registry reads
	// a long list.
	var paged []metastore.Digest
	after := ""
	for range len(want) {
		page, more, err := s.Referrers(ctx(t), "r", sub, after, 2)
		must(t, err)
		if len(page) == 0 || len(page) > 2 {
			t.Fatalf("a page of 2 after %q holds %d", after, len(page))
		}
		for _, r := range page {
			paged = append(paged, r.Digest)
		}
		after = page[len(page)-1].Digest.String()
		if !more {
			break
		}
	}
	if !slices.Equal(paged, want) {
		t.Fatalf("referrers paged = %v, want %v", paged, want)
	}
	if refs, _, err := s.Referrers(ctx(t), "r", dg("nothing"), "", -1); err != nil || refs == nil || len(refs) != 0 {
		t.Fatalf("referrers of an unknown subject = %#v %v, want an empty list", refs, err)
	}
	if refs, _, err := s.Referrers(ctx(t), "nowhere", sub, "", -1); err != nil || len(refs) != 0 {
		t.Fatalf("referrers in an unknown repository = %v %v", refs, err)
	}
}

// testDeleteManifestManyTags: a manifest may carry any number of tags (CI
// that tags every build of an image that did not change); deleting it
// deletes them all, however many one transaction of the store can hold.
func testDeleteManifestManyTags(t *testing.T, s metastore.Store) {
	m, body := manifest("tagged", metastore.Digest{})
	const n = 10_000
	tags := make([]string, 0, 500)
	for i := range n {
		tags = append(tags, fmt.Sprintf("t%05d", i))
		if len(tags) == cap(tags) {
			put(t, s, "r", m, body, tags...)
			tags = tags[:0]
		}
	}
	other, ob := manifest("other", metastore.Digest{})
	put(t, s, "r", other, ob, "keep")
	if got := len(allTags(t, s, "r")); got != n+1 {
		t.Fatalf("%d tags, want %d", got, n+1)
	}
	must(t, s.DeleteManifest(ctx(t), "r", m.Digest))
	if _, err := s.Manifest(ctx(t), "r", m.Digest); !errors.Is(err, metastore.ErrManifestUnknown) {
		t.Fatalf("deleted manifest reads %v", err)
	}
	if tags := allTags(t, s, "r"); !slices.Equal(tags, []string{"keep"}) {
		t.Fatalf("%d tags after the delete, want [keep]", len(tags))
	}
}

func testDeleteManifest(t *testing.T, s metastore.Store) {
	layer := link(t, s, "r", "layer", 0)
	sub, sb := manifest("subject", metastore.Digest{})
	put(t, s, "r", sub, sb, "keep")
	m, body := manifest("doomed", sub.Digest, layer)
	put(t, s, "r", m, body, "a", "b")
	must(t, s.SetTagFetched(ctx(t), "r", "a", at(1)))
	must(t, s.DeleteManifest(ctx(t), "r", m.Digest))
	if _, err := s.Manifest(ctx(t), "r", m.Digest); !errors.Is(err, metastore.ErrManifestUnknown) {
		t.Fatalf("deleted manifest reads %v", err)
	}
	if tags := allTags(t, s, "r"); !slices.Equal(tags, []string{"keep"}) {
		t.Fatalf("tags after delete = %q, want [keep]", tags)
	}
	if refs, _, _ := s.Referrers(ctx(t), "r", sub.Digest, "", -1); len(refs) != 0 {
		t.Fatalf("referrer entry survived: %v", refs)
	}
	if _, _, err := s.BlobLink(ctx(t), "r", layer); err != nil {
		t.Fatalf("the blob link went with the manifest (GC's job): %v", err)
	}
	wantErr(t, "DeleteManifest again", s.DeleteManifest(ctx(t), "r", m.Digest), metastore.ErrManifestUnknown)
	// Pushed again, the tag comes back without the old fetch time.
	put(t, s, "r", m, body, "a")
	if ti := tagOf(t, s, "r", "a"); !ti.Fetched.IsZero() {
		t.Fatalf("fetch time survived the delete: %s", ti.Fetched)
	}
}

func testMoveTag(t *testing.T, s metastore.Store) {
	m1, b1 := manifest("one", metastore.Digest{})
	m2, b2 := manifest("two", metastore.Digest{})
	put(t, s, "r", m1, b1)
	put(t, s, "r", m2, b2)
	zero := metastore.Digest{}
	must(t, s.MoveTag(ctx(t), "r", "t", zero, m1.Digest))
	wantErr(t, "create of an existing tag", s.MoveTag(ctx(t), "r", "t", zero, m2.Digest), metastore.ErrTagMoved)
	wantErr(t, "move from the wrong digest", s.MoveTag(ctx(t), "r", "t", m2.Digest, m1.Digest), metastore.ErrTagMoved)
	wantErr(t, "move of an absent tag", s.MoveTag(ctx(t), "r", "absent", m1.Digest, m2.Digest), metastore.ErrTagMoved)
	must(t, s.SetTagFetched(ctx(t), "r", "t", at(3)))
	must(t, s.MoveTag(ctx(t), "r", "t", m1.Digest, m2.Digest))
	if ti := tagOf(t, s, "r", "t"); ti.Digest != m2.Digest || !ti.Fetched.IsZero() {
		t.Fatalf("after a move: %+v (a move clears the fetch time)", ti)
	}
	wantErr(t, "move to a manifest the repository does not hold",
		s.MoveTag(ctx(t), "r", "t", m2.Digest, dg("nowhere")), metastore.ErrManifestUnknown)
	wantErr(t, "move in another repository", s.MoveTag(ctx(t), "other", "t", zero, m1.Digest), metastore.ErrManifestUnknown)
	if ti := tagOf(t, s, "r", "t"); ti.Digest != m2.Digest {
		t.Fatalf("a refused move changed the tag: %s", ti.Digest)
	}
}

func testDeleteTag(t *testing.T, s metastore.Store) {
	m, body := manifest("m", metastore.Digest{})
	put(t, s, "r", m, body, "t", "u")
	wantErr(t, "SetTagFetched of an absent tag", s.SetTagFetched(ctx(t), "r", "absent", at(1)), metastore.ErrTagUnknown)
	must(t, s.SetTagFetched(ctx(t), "r", "t", at(1)))
	if ti := tagOf(t, s, "r", "t"); !ti.Fetched.Equal(at(1)) {
		t.Fatalf("fetched = %s", ti.Fetched)
	}
	must(t, s.DeleteTag(ctx(t), "r", "t"))
	wantErr(t, "DeleteTag again", s.DeleteTag(ctx(t), "r", "t"), metastore.ErrTagUnknown)
	_, err := s.Tag(ctx(t), "r", "t")
	wantErr(t, "Tag after delete", err, metastore.ErrTagUnknown)
	if _, err := s.Manifest(ctx(t), "r", m.Digest); err != nil {
		t.Fatalf("DeleteTag removed the manifest: %v", err)
	}
	// Tagged again, it has no fetch time from before.
	put(t, s, "r", m, body, "t")
	if ti := tagOf(t, s, "r", "t"); !ti.Fetched.IsZero() {
		t.Fatalf("fetch time survived DeleteTag: %s", ti.Fetched)
	}
}

func testTagsPaging(t *testing.T, s metastore.Store) {
	_, err := s.Tags(ctx(t), "nowhere", "", -1)
	wantErr(t, "Tags of an unknown repository", err, metastore.ErrRepoUnknown)
	m, body := manifest("m", metastore.Digest{})
	// Byte order: upper case before lower, "a" before "a-b" before "a.b".
	tags := []string{"b", "A", "a.b", "a", "a-b", "z", "0"}
	put(t, s, "r", m, body, tags...)
	sorted := slices.Clone(tags)
	slices.Sort(sorted)
	if got := allTags(t, s, "r"); !slices.Equal(got, sorted) {
		t.Fatalf("tags = %q, want %q", got, sorted)
	}
	for _, tc := range []struct {
		last string
		n    int
		want []string
		more bool
	}{
		{"", 3, sorted[:3], true},
		{sorted[2], 3, sorted[3:6], true},
		{sorted[5], 3, sorted[6:], false},
		{sorted[6], 3, []string{}, false},
		{"", len(sorted), sorted, false},
		{"", 0, []string{}, true},
		{"a-", -1, []string{"a-b", "a.b", "b", "z"}, false}, // last need not exist
		{"zz", 5, []string{}, false},
	} {
		p, err := s.Tags(ctx(t), "r", tc.last, tc.n)
		must(t, err)
		if p.Names == nil || !slices.Equal(p.Names, tc.want) || p.More != tc.more {
			t.Errorf("Tags(last=%q, n=%d) = %q more=%v, want %q more=%v", tc.last, tc.n, p.Names, p.More, tc.want, tc.more)
		}
	}
}

func testRepositoriesPaging(t *testing.T, s metastore.Store) {
	if p, err := s.Repositories(ctx(t), "", 10); err != nil || p.Names == nil || len(p.Names) != 0 || p.More {
		t.Fatalf("empty store: %+v %v", p, err)
	}
	names := []string{"b/c", "a", "a/b", "a-b", "b", "library/debian"}
	for _, n := range names {
		link(t, s, n, "x", 0)
	}
	slices.Sort(names)
	var seen []string
	last := ""
	for {
		p, err := s.Repositories(ctx(t), last, 4)
		must(t, err)
		seen = append(seen, p.Names...)
		if !p.More {
			break
		}
		last = p.Names[len(p.Names)-1]
	}
	if !slices.Equal(seen, names) {
		t.Fatalf("paged = %q, want %q", seen, names)
	}
}

// testPagingWhileInserting: a listing paged while another replica adds
// repositories and tags sees each name present from the start once, in
// order.
func testPagingWhileInserting(t *testing.T, s metastore.Store) {
	m, body := manifest("m", metastore.Digest{})
	var before []string
	for i := 0; i < 60; i += 2 {
		name := fmt.Sprintf("r%03d", i)
		before = append(before, name)
		link(t, s, name, "x", 0)
	}
	put(t, s, "tagged", m, body, before...)
	done := make(chan error, 1)
	stop := make(chan struct{})
	go func() {
		defer close(done)
		for i := 1; i < 60; i += 2 {
			select {
			case <-stop:
				return
			default:
			}
			name := fmt.Sprintf("r%03d", i)
			if err := s.LinkBlob(context.Background(), name, dg("x"), at(0)); err != nil {
				done <- err
				return
			}
			if err := s.PutManifest(context.Background(), "tagged", m, body, []string{name}); err != nil {
				done <- err
				return
			}
		}
	}()
	list := map[string]func(last string) (metastore.Page, error){
		"repositories": func(last string) (metastore.Page, error) { return s.Repositories(ctx(t), last, 3) },
		"tags":         func(last string) (metastore.Page, error) { return s.Tags(ctx(t), "tagged", last, 3) },
	}
	for round := 0; round < 5; round++ {
		for what, next := range list {
			var seen []string
			last := ""
			for {
				p, err := next(last)
				must(t, err)
				seen = append(seen, p.Names...)
				if !p.More {
					break
				}
				last = p.Names[len(p.Names)-1]
			}
			for i := 1; i < len(seen); i++ {
				if seen[i] <= seen[i-1] {
					t.Fatalf("%s: %q after %q: not in order, or twice", what, seen[i], seen[i-1])
				}
			}
			for _, n := range before {
				if !slices.Contains(seen, n) {
					t.Fatalf("%s: %q, present throughout, missing from a paged listing", what, n)
				}
			}
		}
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// testHostileNames: names are refused with ErrNameInvalid, changing
// nothing, or stored and read back exactly; never a backend's own trouble.
func testHostileNames(t *testing.T, s metastore.Store) {
	long := strings.Repeat("a", metastore.MaxNameLength)
	stored := []string{
		"ünïcødé/日本語",
		"a'; DROP TABLE tags; --",
		`back\slash"quote`,
		"percent%_under",
		"tab\tnewline\n",
		"emoji-\U0001F600",
		long,
	}
	refused := []string{
		"",
		"nul\x00byte",
		"\x00",
		"bad-utf8-\xff\xfe",
		long + "a",
		strings.Repeat("日", metastore.MaxNameLength),
	}
	m, body := manifest("m", metastore.Digest{})
	d := dg("blob")
	_, err := s.RecordBlob(ctx(t), d, 4, at(0))
	must(t, err)
	for _, name := range stored {
		must(t, s.LinkBlob(ctx(t), name, d, at(0)))
		put(t, s, name, m, body, name)
		if ti := tagOf(t, s, name, name); ti.Digest != m.Digest {
			t.Fatalf("tag %q = %v", name, ti)
		}
		if tags := allTags(t, s, name); !slices.Equal(tags, []string{name}) {
			t.Fatalf("tags of %q = %q", name, tags)
		}
		u, err := s.CreateUpload(ctx(t), metastore.Upload{ID: "id-" + name[:min(len(name), 100)], Repo: name, Owner: name, Started: at(0)}, metastore.UploadQuota{})
		must(t, err)
		if got, err := s.Upload(ctx(t), u.ID); err != nil || got.Repo != name || got.Owner != name {
			t.Fatalf("upload of %q = %+v %v", name, got, err)
		}
	}
	want := slices.Clone(stored)
	slices.Sort(want)
	if got := allRepos(t, s); !slices.Equal(got, want) {
		t.Fatalf("repositories = %q, want %q", got, want)
	}
	for _, name := range refused {
		calls := map[string]error{
			"LinkBlob":        s.LinkBlob(ctx(t), name, d, at(0)),
			"PutManifest":     s.PutManifest(ctx(t), name, m, body, nil),
			"PutManifest tag": s.PutManifest(ctx(t), "ok", m, body, []string{name}),
			"MoveTag":         s.MoveTag(ctx(t), "ok", name, metastore.Digest{}, m.Digest),
			"DeleteTag":       s.DeleteTag(ctx(t), "ok", name),
			"SetTagFetched":   s.SetTagFetched(ctx(t), "ok", name, at(0)),
			"UnlinkBlob":      s.UnlinkBlob(ctx(t), name, d),
			"DeleteManifest":  s.DeleteManifest(ctx(t), name, m.Digest),
			"DeleteUpload":    s.DeleteUpload(ctx(t), name),
		}
		_, calls["Tag"] = s.Tag(ctx(t), "ok", name)
		_, calls["Tags"] = s.Tags(ctx(t), name, "", -1)
		_, calls["Manifest"] = s.Manifest(ctx(t), name, m.Digest)
		_, _, calls["Referrers"] = s.Referrers(ctx(t), name, m.Digest, "", -1)
		_, _, calls["BlobLink"] = s.BlobLink(ctx(t), name, d)
		_, calls["RenewBlobLink"] = s.RenewBlobLink(ctx(t), name, d, at(0), at(0))
		_, calls["Upload"] = s.Upload(ctx(t), name)
		_, calls["UploadUsage"] = s.UploadUsage(ctx(t), name, "")
		_, calls["CreateUpload repo"] = s.CreateUpload(ctx(t), metastore.Upload{ID: "x", Repo: name, Started: at(0)}, metastore.UploadQuota{})
		_, calls["CreateUpload id"] = s.CreateUpload(ctx(t), metastore.Upload{ID: name, Repo: "ok", Started: at(0)}, metastore.UploadQuota{})
		if name != "" { // the empty owner is nobody, and fine
			_, calls["CreateUpload owner"] = s.CreateUpload(ctx(t), metastore.Upload{ID: "y", Repo: "ok", Owner: name, Started: at(0)}, metastore.UploadQuota{})
			_, calls["UploadUsage owner"] = s.UploadUsage(ctx(t), "ok", name)
		}
		for call, err := range calls {
			if !errors.Is(err, metastore.ErrNameInvalid) {
				t.Errorf("%s(%q) = %v, want ErrNameInvalid", call, name, err)
			}
		}
	}
	if got := allRepos(t, s); !slices.Equal(got, want) {
		t.Fatalf("refused names changed the repositories: %q", got)
	}
	// Paging from a hostile `last` is a comparison, nothing more.
	for _, last := range []string{"'", "\x00", "\xff"} {
		if _, err := s.Repositories(ctx(t), last, 2); err != nil && !errors.Is(err, metastore.ErrNameInvalid) {
			t.Errorf("Repositories(last=%q) = %v", last, err)
		}
	}
}

func testUploads(t *testing.T, s metastore.Store) {
	state := []byte{0, 1, 0xff, 'x', 0}
	u, err := s.CreateUpload(ctx(t), metastore.Upload{ID: "u1", Repo: "r", Owner: "alice", State: state, Started: at(0)}, metastore.UploadQuota{})
	must(t, err)
	if u.Version != 1 || u.Size != 0 || !u.Updated.Equal(at(0)) || !bytes.Equal(u.State, state) {
		t.Fatalf("created = %+v", u)
	}
	_, err = s.CreateUpload(ctx(t), metastore.Upload{ID: "u1", Repo: "r", Started: at(1)}, metastore.UploadQuota{})
	wantErr(t, "CreateUpload of a taken ID", err, metastore.ErrUploadExists)
	got, err := s.Upload(ctx(t), "u1")
	must(t, err)
	if got.Repo != "r" || got.Owner != "alice" || !bytes.Equal(got.State, state) || got.Version != 1 || !got.Started.Equal(at(0)) {
		t.Fatalf("Upload = %+v", got)
	}
	next, err := s.AdvanceUpload(ctx(t), got, []byte("s2"), 100, at(2))
	must(t, err)
	if next.Version != 2 || next.Size != 100 || string(next.State) != "s2" || !next.Updated.Equal(at(2)) || !next.Started.Equal(at(0)) {
		t.Fatalf("advanced = %+v", next)
	}
	// The stale read loses, whatever it offers.
	_, err = s.AdvanceUpload(ctx(t), got, []byte("s3"), 100, at(3))
	wantErr(t, "AdvanceUpload from a stale version", err, metastore.ErrUploadMoved)
	stale := next
	stale.Size = 50
	_, err = s.AdvanceUpload(ctx(t), stale, []byte("s3"), 150, at(3))
	wantErr(t, "AdvanceUpload from a stale size", err, metastore.ErrUploadMoved)
	_, err = s.AdvanceUpload(ctx(t), next, []byte("s3"), 99, at(3))
	wantErr(t, "AdvanceUpload shrinking", err, metastore.ErrUploadMoved)
	// An empty chunk advances the version, not the size: the version
	// alone tells the stale read.
	same, err := s.AdvanceUpload(ctx(t), next, []byte("s2'"), 100, at(3))
	must(t, err)
	_, err = s.AdvanceUpload(ctx(t), next, []byte("s3"), 100, at(3))
	wantErr(t, "AdvanceUpload from a stale version of the same size", err, metastore.ErrUploadMoved)
	next = same
	if got, _ := s.Upload(ctx(t), "u1"); got.Version != 3 || string(got.State) != "s2'" {
		t.Fatalf("refused advances changed the session: %+v", got)
	}
	use, err := s.UploadUsage(ctx(t), "r", "alice")
	must(t, err)
	if use != (metastore.UploadUsage{RepoSessions: 1, OwnerSessions: 1, OwnerBytes: 100, Bytes: 100}) {
		t.Fatalf("usage = %+v", use)
	}
	must(t, s.DeleteUpload(ctx(t), "u1"))
	wantErr(t, "DeleteUpload again", s.DeleteUpload(ctx(t), "u1"), metastore.ErrUploadUnknown)
	_, err = s.Upload(ctx(t), "u1")
	wantErr(t, "Upload after delete", err, metastore.ErrUploadUnknown)
	_, err = s.AdvanceUpload(ctx(t), next, nil, 200, at(4))
	wantErr(t, "AdvanceUpload of a deleted session", err, metastore.ErrUploadMoved)
	if use, _ := s.UploadUsage(ctx(t), "r", "alice"); use != (metastore.UploadUsage{}) {
		t.Fatalf("usage after delete = %+v", use)
	}
}

func testUploadQuota(t *testing.T, s metastore.Store) {
	q := metastore.UploadQuota{PerRepo: 2, PerOwner: 3}
	create := func(id, repo, owner string) error {
		_, err := s.CreateUpload(ctx(t), metastore.Upload{ID: id, Repo: repo, Owner: owner, Started: at(0)}, q)
		return err
	}
	must(t, create("1", "r", "alice"))
	must(t, create("2", "r", "bob"))
	wantErr(t, "third session of r", create("3", "r", "carol"), metastore.ErrTooManyUploads)
	must(t, create("4", "s", "alice"))
	must(t, create("5", "t", "alice"))
	wantErr(t, "fourth session of alice", create("6", "u", "alice"), metastore.ErrTooManyUploads)
	// Sessions without an owner count against nobody.
	must(t, create("7", "u", ""))
	must(t, create("8", "u", ""))
	if _, err := s.Upload(ctx(t), "3"); !errors.Is(err, metastore.ErrUploadUnknown) {
		t.Fatalf("a refused session was created: %v", err)
	}
	use, err := s.UploadUsage(ctx(t), "u", "alice")
	must(t, err)
	if use.RepoSessions != 2 || use.OwnerSessions != 3 {
		t.Fatalf("usage = %+v", use)
	}
	must(t, s.DeleteUpload(ctx(t), "1"))
	must(t, create("3", "r", "carol"))
}

func testExpiredUploads(t *testing.T, s metastore.Store) {
	for i := range 6 {
		u, err := s.CreateUpload(ctx(t), metastore.Upload{ID: fmt.Sprint("u", i), Repo: "r", Started: at(i * 10)}, metastore.UploadQuota{})
		must(t, err)
		if i == 1 {
			_, err = s.AdvanceUpload(ctx(t), u, nil, 1, at(45)) // old but busy
			must(t, err)
		}
	}
	ids := func(us []metastore.Upload) []string {
		var out []string
		for _, u := range us {
			out = append(out, u.ID)
		}
		return out
	}
	// TTL only: started before minute 25.
	got, err := s.ExpiredUploads(ctx(t), at(25), time.Time{}, metastore.Upload{}, 10)
	must(t, err)
	if !slices.Equal(ids(got), []string{"u0", "u1", "u2"}) {
		t.Fatalf("expired by TTL = %q", ids(got))
	}
	// With an idle limit: u1 was updated at 45, u3 started (so updated) at 30.
	got, err = s.ExpiredUploads(ctx(t), at(5), at(35), metastore.Upload{}, 10)
	must(t, err)
	if !slices.Equal(ids(got), []string{"u0", "u2", "u3"}) {
		t.Fatalf("expired by TTL or idleness = %q", ids(got))
	}
	if got, _ = s.ExpiredUploads(ctx(t), at(100), time.Time{}, metastore.Upload{}, 2); len(got) != 2 {
		t.Fatalf("n=2 gave %d", len(got))
	}
	// From a cursor: the batches after u1 (as read back) go on with u2,
	// and the same start with a greater ID comes after.
	got, err = s.ExpiredUploads(ctx(t), at(100), time.Time{}, got[1], 2)
	must(t, err)
	if !slices.Equal(ids(got), []string{"u2", "u3"}) {
		t.Fatalf("after u1 = %q", ids(got))
	}
	got, err = s.ExpiredUploads(ctx(t), at(100), time.Time{}, metastore.Upload{ID: "u3", Started: got[1].Started}, 10)
	must(t, err)
	if !slices.Equal(ids(got), []string{"u4", "u5"}) {
		t.Fatalf("after u3 = %q", ids(got))
	}
	got, err = s.ExpiredUploads(ctx(t), at(100), time.Time{}, metastore.Upload{ID: "u", Started: got[0].Started}, 10)
	must(t, err)
	if !slices.Equal(ids(got), []string{"u4", "u5"}) {
		t.Fatalf("after (u4's start, \"u\") = %q", ids(got))
	}
}

// raceGoroutines is how many "replicas" race in the concurrency tests.
const raceGoroutines = 8

// start runs fn in n goroutines released at once and collects errors.
func start(n int, fn func(i int) error) []error {
	errs := make([]error, n)
	ready := make(chan struct{})
	done := make(chan struct{}, n)
	for i := range n {
		go func() {
			defer func() { done <- struct{}{} }()
			<-ready
			errs[i] = fn(i)
		}()
	}
	close(ready)
	for range n {
		<-done
	}
	return errs
}

func testConcurrentTagMoves(t *testing.T, s metastore.Store) {
	base, bb := manifest("base", metastore.Digest{})
	put(t, s, "r", base, bb, "t")
	for round := range 5 {
		// Targets of this round only, so no mover "moves" the tag to
		// where it is.
		targets := make([]metastore.Digest, raceGoroutines)
		for i := range targets {
			m, body := manifest(fmt.Sprint("target", round, "-", i), metastore.Digest{})
			put(t, s, "r", m, body)
			targets[i] = m.Digest
		}
		from := tagOf(t, s, "r", "t").Digest
		errs := start(raceGoroutines, func(i int) error {
			return s.MoveTag(context.Background(), "r", "t", from, targets[i])
		})
		winners := 0
		var winner metastore.Digest
		for i, err := range errs {
			switch {
			case err == nil:
				winners++
				winner = targets[i]
			case !errors.Is(err, metastore.ErrTagMoved):
				t.Fatalf("round %d, mover %d: %v, want ErrTagMoved", round, i, err)
			}
		}
		if winners != 1 {
			t.Fatalf("round %d: %d movers won, want exactly one", round, winners)
		}
		if got := tagOf(t, s, "r", "t").Digest; got != winner {
			t.Fatalf("round %d: tag at %s, the winner moved it to %s", round, got, winner)
		}
	}
}

// testMoveRacesDelete: a tag moved to a manifest that is deleted at the
// same moment never points at nothing: either the move lost, or the
// delete took the tag with it.
func testMoveRacesDelete(t *testing.T, s metastore.Store) {
	base, bb := manifest("base", metastore.Digest{})
	put(t, s, "r", base, bb, "t")
	for i := range 20 {
		m, body := manifest(fmt.Sprint("doomed", i), metastore.Digest{})
		put(t, s, "r", m, body)
		errs := start(2, func(j int) error {
			if j == 0 {
				return s.MoveTag(context.Background(), "r", "t", base.Digest, m.Digest)
			}
			return s.DeleteManifest(context.Background(), "r", m.Digest)
		})
		must(t, errs[1])
		if errs[0] != nil && !errors.Is(errs[0], metastore.ErrManifestUnknown) {
			t.Fatalf("race %d: move: %v", i, errs[0])
		}
		ti, err := s.Tag(ctx(t), "r", "t")
		switch {
		case errors.Is(err, metastore.ErrTagUnknown):
			// The move won, the delete took the tag: push it back.
			put(t, s, "r", base, bb, "t")
		case err != nil:
			t.Fatal(err)
		case ti.Digest != base.Digest:
			t.Fatalf("race %d: tag at %s, a manifest deleted (move: %v)", i, ti.Digest, errs[0])
		}
	}
}

// testConcurrentCreates: create-only pushes of one tag with different
// manifests from several replicas leave exactly one winner, whose
// manifest the tag points at; every loser is told the tag moved and
// leaves nothing behind, not even its manifest.
func testConcurrentCreates(t *testing.T, s metastore.Store) {
	ms := make([]metastore.Manifest, raceGoroutines)
	bodies := make([][]byte, raceGoroutines)
	for i := range ms {
		ms[i], bodies[i] = manifest(fmt.Sprint("m", i), metastore.Digest{}, dg(fmt.Sprint("layer", i)))
	}
	for round := range 3 {
		tag := fmt.Sprint("v", round)
		repo := fmt.Sprint("r", round)
		errs := start(raceGoroutines, func(i int) error {
			return s.CreateManifest(context.Background(), repo, ms[i], bodies[i], []string{"mine" + fmt.Sprint(i), tag})
		})
		winner := -1
		for i, err := range errs {
			switch {
			case err == nil && winner >= 0:
				t.Fatalf("round %d: creates %d and %d both succeeded", round, winner, i)
			case err == nil:
				winner = i
			case !errors.Is(err, metastore.ErrTagMoved):
				t.Fatalf("round %d: create %d: %v, want ErrTagMoved", round, i, err)
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: no create succeeded", round)
		}
		if got := tagOf(t, s, repo, tag).Digest; got != ms[winner].Digest {
			t.Fatalf("round %d: %s points at %s, want the winner's %s", round, tag, got, ms[winner].Digest)
		}
		for i := range ms {
			if i == winner {
				continue
			}
			if _, err := s.Manifest(ctx(t), repo, ms[i].Digest); !errors.Is(err, metastore.ErrManifestUnknown) {
				t.Fatalf("round %d: loser %d left its manifest: %v", round, i, err)
			}
			if _, err := s.Tag(ctx(t), repo, "mine"+fmt.Sprint(i)); !errors.Is(err, metastore.ErrTagUnknown) {
				t.Fatalf("round %d: loser %d left its own tag: %v", round, i, err)
			}
		}
	}
}

// testConcurrentCreateRetype: replicas pushing the same bytes at once
// as creates, under two media types: the manifest ends with one type,
// and every push that did not give it that type was refused.
func testConcurrentCreateRetype(t *testing.T, s metastore.Store) {
	m, body := manifest("m", metastore.Digest{})
	types := []string{"application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json"}
	for round := range 3 {
		repo := fmt.Sprint("r", round)
		errs := start(raceGoroutines, func(i int) error {
			mi := m
			mi.MediaType = types[i%2]
			return s.CreateManifest(context.Background(), repo, mi, body, nil)
		})
		got, err := s.Manifest(ctx(t), repo, m.Digest)
		must(t, err)
		for i, err := range errs {
			if types[i%2] == got.MediaType && err != nil || types[i%2] != got.MediaType && !errors.Is(err, metastore.ErrManifestRetyped) {
				t.Fatalf("round %d: create %d as %s, stored as %s: %v", round, i, types[i%2], got.MediaType, err)
			}
		}
	}
}

// testConcurrentPuts: manifest PUTs of one tag from several replicas leave
// the tag at one of them, whose manifest is there whole.
func testConcurrentPuts(t *testing.T, s metastore.Store) {
	ms := make([]metastore.Manifest, raceGoroutines)
	bodies := make([][]byte, raceGoroutines)
	for i := range ms {
		ms[i], bodies[i] = manifest(fmt.Sprint("m", i), metastore.Digest{}, dg(fmt.Sprint("layer", i)))
	}
	for round := range 3 {
		errs := start(raceGoroutines, func(i int) error {
			return s.PutManifest(context.Background(), "r", ms[i], bodies[i], []string{"latest", fmt.Sprint("v", round)})
		})
		for i, err := range errs {
			if err != nil {
				t.Fatalf("put %d: %v", i, err)
			}
		}
		latest, v := tagOf(t, s, "r", "latest").Digest, tagOf(t, s, "r", fmt.Sprint("v", round)).Digest
		i := slices.IndexFunc(ms, func(m metastore.Manifest) bool { return m.Digest == latest })
		if i < 0 {
			t.Fatalf("latest points at %s, none of the puts", latest)
		}
		if _, body, err := s.ManifestBody(ctx(t), "r", latest); err != nil || !bytes.Equal(body, bodies[i]) {
			t.Fatalf("the winner's manifest: %v", err)
		}
		if !slices.ContainsFunc(ms, func(m metastore.Manifest) bool { return m.Digest == v }) {
			t.Fatalf("v%d points at %s, none of the puts", round, v)
		}
	}
}

// testConcurrentTagsOfOneManifest: writers push one manifest at once,
// each under tags of its own (CI jobs tagging one image). Every push
// rewrites the manifest's record, so they contend on it; each must still
// succeed, and every tag point at the manifest. A badger store whose
// conflicting writers all retried together failed two pushes in three.
func testConcurrentTagsOfOneManifest(t *testing.T, s metastore.Store) {
	m, body := manifest("shared", metastore.Digest{}, dg("layer"))
	const each = 10
	errs := start(raceGoroutines, func(i int) error {
		for j := range each {
			if err := s.PutManifest(context.Background(), "ci/app", m, body, []string{fmt.Sprintf("w%d-%d", i, j)}); err != nil {
				return err
			}
		}
		return nil
	})
	for i, err := range errs {
		if err != nil {
			t.Errorf("writer %d: %v", i, err)
		}
	}
	for i := range raceGoroutines {
		for j := range each {
			if got := tagOf(t, s, "ci/app", fmt.Sprintf("w%d-%d", i, j)).Digest; got != m.Digest {
				t.Fatalf("tag w%d-%d points at %s, want %s", i, j, got, m.Digest)
			}
		}
	}
}

// testConcurrentAdvance: a session read by several replicas is advanced
// by exactly one; replicas that read again and retry lose no chunk.
func testConcurrentAdvance(t *testing.T, s metastore.Store) {
	u, err := s.CreateUpload(ctx(t), metastore.Upload{ID: "u", Repo: "r", Owner: "o", Started: at(0)}, metastore.UploadQuota{})
	must(t, err)
	errs := start(raceGoroutines, func(i int) error {
		_, err := s.AdvanceUpload(context.Background(), u, []byte{byte(i)}, 10, at(1))
		return err
	})
	winners := 0
	for i, err := range errs {
		switch {
		case err == nil:
			winners++
		case !errors.Is(err, metastore.ErrUploadMoved):
			t.Fatalf("advance %d: %v", i, err)
		}
	}
	if winners != 1 {
		t.Fatalf("%d replicas advanced one session from one version, want 1", winners)
	}
	const each = 5
	errs = start(raceGoroutines, func(i int) error {
		for range each {
			for {
				cur, err := s.Upload(context.Background(), "u")
				if err != nil {
					return err
				}
				_, err = s.AdvanceUpload(context.Background(), cur, cur.State, cur.Size+1, at(2))
				if errors.Is(err, metastore.ErrUploadMoved) {
					continue
				}
				if err != nil {
					return err
				}
				break
			}
		}
		return nil
	})
	for _, err := range errs {
		must(t, err)
	}
	got, err := s.Upload(ctx(t), "u")
	must(t, err)
	if want := int64(10 + raceGoroutines*each); got.Size != want || got.Version != 2+raceGoroutines*each {
		t.Fatalf("after %d retried chunks: size %d version %d, want %d and %d", raceGoroutines*each, got.Size, got.Version, want, 2+raceGoroutines*each)
	}
}

// testConcurrentQuota: replicas opening sessions at once never pass the
// limit together.
func testConcurrentQuota(t *testing.T, s metastore.Store) {
	q := metastore.UploadQuota{PerRepo: 3, PerOwner: 2}
	errs := start(raceGoroutines, func(i int) error {
		_, err := s.CreateUpload(context.Background(), metastore.Upload{ID: fmt.Sprint("r", i), Repo: "r", Started: at(0)}, q)
		return err
	})
	errs = append(errs, start(raceGoroutines, func(i int) error {
		_, err := s.CreateUpload(context.Background(), metastore.Upload{ID: fmt.Sprint("o", i), Repo: fmt.Sprint("repo", i), Owner: "alice", Started: at(0)}, q)
		return err
	})...)
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, metastore.ErrTooManyUploads):
			t.Fatal(err)
		}
	}
	if ok != q.PerRepo+q.PerOwner {
		t.Fatalf("%d sessions opened, the limits allow %d", ok, q.PerRepo+q.PerOwner)
	}
}

func testUnreferencedLinks(t *testing.T, s metastore.Store) {
	config := link(t, s, "a", "config", 0)
	layer := link(t, s, "a", "layer", 0)
	orphan := link(t, s, "a", "orphan", 0)
	young := link(t, s, "a", "young", 50)
	link(t, s, "b", "layer", 0) // b links it; only a's manifest references it
	m, body := manifest("image", metastore.Digest{}, config, layer)
	put(t, s, "a", m, body, "latest")
	// A link to the manifest's own digest is referenced by it.
	_, err := s.RecordBlob(ctx(t), m.Digest, int64(len(body)), at(0))
	must(t, err)
	must(t, s.LinkBlob(ctx(t), "a", m.Digest, at(0)))

	cutoff := at(30)
	got := unreferenced(t, s, cutoff)
	want := []string{"a " + orphan.String(), "b " + layer.String()}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("unreferenced = %q, want %q", got, want)
	}
	must(t, s.DeleteManifest(ctx(t), "a", m.Digest))
	got = unreferenced(t, s, cutoff)
	want = append(want, "a "+config.String(), "a "+layer.String(), "a "+m.Digest.String())
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("after the manifest is deleted = %q, want %q", got, want)
	}
	_ = young // too young whatever references it
	// In batches, by cursor.
	var paged []string
	after := metastore.Link{}
	for {
		ls, err := s.UnreferencedLinks(ctx(t), cutoff, after, 2)
		must(t, err)
		if len(ls) == 0 {
			break
		}
		for _, l := range ls {
			paged = append(paged, l.Repo+" "+l.Digest.String())
		}
		after = ls[len(ls)-1]
	}
	if !slices.Equal(paged, want) {
		t.Fatalf("paged = %q, want %q", paged, want)
	}
	ls, err := s.UnreferencedLinks(ctx(t), cutoff, metastore.Link{}, 100)
	must(t, err)
	dropped, err := s.DropLinks(ctx(t), ls, cutoff)
	must(t, err)
	if len(dropped) != len(want) {
		t.Fatalf("dropped %d of %d", len(dropped), len(want))
	}
	if got := unreferenced(t, s, cutoff); len(got) != 0 {
		t.Fatalf("left after the drop: %q", got)
	}
	if _, _, err := s.BlobLink(ctx(t), "a", young); err != nil {
		t.Fatalf("the young link went: %v", err)
	}
}

func unreferenced(t *testing.T, s metastore.Store, before time.Time) []string {
	t.Helper()
	ls, err := s.UnreferencedLinks(ctx(t), before, metastore.Link{}, 1000)
	must(t, err)
	var out []string
	for _, l := range ls {
		out = append(out, l.Repo+" "+l.Digest.String())
	}
	return out
}

// testDropLinksChecksAgain: what changed between listing and dropping
// wins: a renewed link, a link a new manifest references.
func testDropLinksChecksAgain(t *testing.T, s metastore.Store) {
	renewed := link(t, s, "r", "renewed", 0)
	referenced := link(t, s, "r", "referenced", 0)
	gone := link(t, s, "r", "gone", 0)
	plain := link(t, s, "r", "plain", 0)
	cutoff := at(30)
	ls, err := s.UnreferencedLinks(ctx(t), cutoff, metastore.Link{}, 100)
	must(t, err)
	if len(ls) != 4 {
		t.Fatalf("listed %d links, want 4", len(ls))
	}
	must(t, s.LinkBlob(ctx(t), "r", renewed, at(40)))
	m, body := manifest("new", metastore.Digest{}, referenced)
	put(t, s, "r", m, body)
	must(t, s.UnlinkBlob(ctx(t), "r", gone))
	dropped, err := s.DropLinks(ctx(t), ls, cutoff)
	must(t, err)
	if len(dropped) != 1 || dropped[0].Digest != plain {
		t.Fatalf("dropped %v, want only %s", dropped, plain)
	}
	for _, d := range []metastore.Digest{renewed, referenced} {
		if _, _, err := s.BlobLink(ctx(t), "r", d); err != nil {
			t.Fatalf("%s dropped: %v", d, err)
		}
	}
}

func testGCBlobs(t *testing.T, s metastore.Store) {
	old, err := s.RecordBlob(ctx(t), dg("old"), 3, at(0))
	must(t, err)
	_, err = s.RecordBlob(ctx(t), dg("young"), 5, at(50))
	must(t, err)
	linked := link(t, s, "r", "linked", 0)
	// Bytes held as a manifest count as linked.
	m, body := manifest("m", metastore.Digest{})
	_, err = s.RecordBlob(ctx(t), m.Digest, int64(len(body)), at(0))
	must(t, err)
	put(t, s, "r", m, body)
	var more []metastore.Digest
	for i := range 5 {
		r, err := s.RecordBlob(ctx(t), dg(fmt.Sprint("more", i)), 1, at(1))
		must(t, err)
		more = append(more, r.Digest)
	}
	cutoff := at(30)
	want := append([]metastore.Digest{old.Digest}, more...)
	slices.SortFunc(want, func(a, b metastore.Digest) int { return strings.Compare(a.String(), b.String()) })
	got := blobPages(t, func(after metastore.Digest) ([]metastore.BlobRecord, error) {
		return s.UnlinkedBlobs(ctx(t), cutoff, after, 2)
	})
	if !slices.Equal(got, want) {
		t.Fatalf("unlinked = %v, want %v", got, want)
	}
	marked, err := s.MarkBlobsDeleting(ctx(t), append(slices.Clone(got), linked, dg("young")), cutoff)
	must(t, err)
	if len(marked) != len(want) {
		t.Fatalf("marked %d, want %d (never the linked or young one)", len(marked), len(want))
	}
	_, err = s.Blob(ctx(t), old.Digest)
	wantErr(t, "Blob of a blob being deleted", err, metastore.ErrBlobUnknown)
	wantErr(t, "LinkBlob of a blob being deleted", s.LinkBlob(ctx(t), "r", old.Digest, at(60)), metastore.ErrBlobUnknown)
	_, err = s.RecordBlob(ctx(t), old.Digest, 3, at(60))
	wantErr(t, "RecordBlob of a blob being deleted", err, metastore.ErrBlobDeleting)
	if rs, _ := s.UnlinkedBlobs(ctx(t), cutoff, metastore.Digest{}, 100); len(rs) != 0 {
		t.Fatalf("marked blobs listed again as unlinked: %v", rs)
	}
	deleting := blobPages(t, func(after metastore.Digest) ([]metastore.BlobRecord, error) {
		return s.DeletingBlobs(ctx(t), after, 4)
	})
	if !slices.Equal(deleting, want) {
		t.Fatalf("deleting = %v, want %v", deleting, want)
	}
	// Forgetting only touches marked ones.
	must(t, s.ForgetBlobs(ctx(t), append(slices.Clone(want), linked)))
	if rs, _ := s.DeletingBlobs(ctx(t), metastore.Digest{}, 100); len(rs) != 0 {
		t.Fatalf("left marked: %v", rs)
	}
	if _, err := s.Blob(ctx(t), linked); err != nil {
		t.Fatalf("ForgetBlobs took a blob that was not marked: %v", err)
	}
	// Pushed again, it is a new blob.
	r, err := s.RecordBlob(ctx(t), old.Digest, 3, at(70))
	must(t, err)
	if !r.Created.Equal(at(70)) {
		t.Fatalf("recorded again after the sweep: %+v", r)
	}
}

// blobPages reads a listing of blobs in pages to its end, by cursor.
func blobPages(t *testing.T, next func(after metastore.Digest) ([]metastore.BlobRecord, error)) []metastore.Digest {
	t.Helper()
	var out []metastore.Digest
	after := metastore.Digest{}
	for {
		rs, err := next(after)
		must(t, err)
		if len(rs) == 0 {
			return out
		}
		for _, r := range rs {
			out = append(out, r.Digest)
		}
		after = rs[len(rs)-1].Digest
	}
}

// testMarkChecksAgain: a blob linked or touched between listing and
// marking is not marked.
func testMarkChecksAgain(t *testing.T, s metastore.Store) {
	var ds []metastore.Digest
	for _, n := range []string{"linked", "touched", "plain"} {
		r, err := s.RecordBlob(ctx(t), dg(n), 1, at(0))
		must(t, err)
		ds = append(ds, r.Digest)
	}
	cutoff := at(30)
	rs, err := s.UnlinkedBlobs(ctx(t), cutoff, metastore.Digest{}, 10)
	must(t, err)
	if len(rs) != 3 {
		t.Fatalf("listed %d", len(rs))
	}
	must(t, s.LinkBlob(ctx(t), "r", ds[0], at(40)))
	_, err = s.RecordBlob(ctx(t), ds[1], 1, at(40))
	must(t, err)
	marked, err := s.MarkBlobsDeleting(ctx(t), ds, cutoff)
	must(t, err)
	if len(marked) != 1 || marked[0].Digest != ds[2] {
		t.Fatalf("marked %v, want only %s", marked, ds[2])
	}
}

// testMarkRacesLink: a link and a mark of one old unlinked blob at once
// never both win: either the link stands and the blob is not marked, or
// the blob is marked and the link was refused.
func testMarkRacesLink(t *testing.T, s metastore.Store) {
	for i := range 20 {
		r, err := s.RecordBlob(ctx(t), dg(fmt.Sprint("race", i)), 1, at(0))
		must(t, err)
		var marked []metastore.BlobRecord
		errs := start(2, func(j int) error {
			if j == 0 {
				return s.LinkBlob(context.Background(), "r", r.Digest, at(0))
			}
			var err error
			marked, err = s.MarkBlobsDeleting(context.Background(), []metastore.Digest{r.Digest}, at(30))
			return err
		})
		must(t, errs[1])
		switch {
		case errs[0] == nil && len(marked) == 0:
		case errors.Is(errs[0], metastore.ErrBlobUnknown) && len(marked) == 1:
		default:
			t.Fatalf("race %d: link %v, marked %d: a link to a blob being deleted", i, errs[0], len(marked))
		}
	}
}
