package cache

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
)

func manifestBody(name string, subject Digest) []byte {
	s := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"n":%q}`, name)
	if !subject.IsZero() {
		s += fmt.Sprintf(`,"subject":{"digest":%q}`, subject)
	}
	return []byte(s + "}")
}

func putManifest(t testing.TB, s *Store, repo, name string, subject Digest, tags ...string) Manifest {
	t.Helper()
	body := manifestBody(name, subject)
	m := Manifest{
		Digest:       digestOf(body),
		MediaType:    "application/vnd.oci.image.manifest.v1+json",
		Subject:      subject,
		ArtifactType: "application/x." + name,
		Annotations:  map[string]string{"n": name},
	}
	if err := s.PutManifest(t.Context(), repo, m, body, tags); err != nil {
		t.Fatalf("PutManifest(%s): %v", name, err)
	}
	m.Size = int64(len(body))
	return m
}

func TestManifests(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{})
	m := putManifest(t, s, "app", "one", Digest{}, "latest", "v1")

	got, body, err := s.GetManifest(t.Context(), "app", m.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(body, manifestBody("one", Digest{})) {
		t.Errorf("body = %s", body)
	}
	if got.Digest != m.Digest || got.Size != m.Size || got.MediaType != m.MediaType ||
		got.ArtifactType != m.ArtifactType || got.Annotations["n"] != "one" || !got.Subject.IsZero() {
		t.Errorf("GetManifest = %+v, want %+v", got, m)
	}
	if st, err := s.StatManifest(t.Context(), "app", m.Digest); err != nil || st.Size != m.Size {
		t.Errorf("StatManifest = %+v, %v", st, err)
	}
	// The bytes are an ordinary blob of the content store.
	if info, err := s.StatBlob(t.Context(), m.Digest); err != nil || info.Size != m.Size {
		t.Errorf("StatBlob(manifest) = %+v, %v", info, err)
	}
	for _, tag := range []string{"latest", "v1"} {
		if d, err := s.ResolveTag(t.Context(), "app", tag); err != nil || d != m.Digest {
			t.Errorf("ResolveTag(%s) = %s, %v", tag, d, err)
		}
	}

	// Another repository does not see it.
	_, _, err = s.GetManifest(t.Context(), "other", m.Digest)
	wantErr(t, "GetManifest other repo", err, ErrManifestUnknown)
	_, err = s.ResolveTag(t.Context(), "other", "latest")
	wantErr(t, "ResolveTag other repo", err, ErrTagUnknown)
	_, _, err = s.Tags(t.Context(), "other", "", -1)
	wantErr(t, "Tags other repo", err, ErrRepoUnknown)

	// Wrong digest: nothing stored.
	body2 := []byte(`{"x":1}`)
	err = s.PutManifest(t.Context(), "app", Manifest{Digest: m.Digest}, body2, []string{"bad"})
	wantErr(t, "PutManifest mismatch", err, ErrDigestMismatch)
	_, err = s.ResolveTag(t.Context(), "app", "bad")
	wantErr(t, "tag of failed put", err, ErrTagUnknown)
	_, err = s.StatBlob(t.Context(), digestOf(body2))
	wantErr(t, "blob of failed put", err, ErrBlobUnknown)
	wantErr(t, "PutManifest invalid digest", s.PutManifest(t.Context(), "app", Manifest{}, body2, nil), ErrDigestInvalid)
	wantErr(t, "PutManifest bad tag", s.PutManifest(t.Context(), "app", Manifest{Digest: digestOf(body2)}, body2, []string{""}), ErrNameInvalid)

	// Moving a tag, deleting one tag.
	m2 := putManifest(t, s, "app", "two", Digest{}, "v1", "v2")
	if d, _ := s.ResolveTag(t.Context(), "app", "v1"); d != m2.Digest {
		t.Errorf("v1 not moved: %s", d)
	}
	wantErr(t, "DeleteTag", s.DeleteTag(t.Context(), "app", "v2"), nil)
	wantErr(t, "DeleteTag again", s.DeleteTag(t.Context(), "app", "v2"), ErrTagUnknown)
	if _, err := s.StatManifest(t.Context(), "app", m2.Digest); err != nil {
		t.Errorf("manifest gone with its tag: %v", err)
	}

	// Deleting a manifest takes exactly its tags.
	if err := s.DeleteManifest(t.Context(), "app", m.Digest); err != nil {
		t.Fatal(err)
	}
	_, _, err = s.GetManifest(t.Context(), "app", m.Digest)
	wantErr(t, "GetManifest deleted", err, ErrManifestUnknown)
	_, err = s.ResolveTag(t.Context(), "app", "latest")
	wantErr(t, "tag of deleted manifest", err, ErrTagUnknown)
	if d, err := s.ResolveTag(t.Context(), "app", "v1"); err != nil || d != m2.Digest {
		t.Errorf("v1 = %s, %v", d, err)
	}
	wantErr(t, "DeleteManifest again", s.DeleteManifest(t.Context(), "app", m.Digest), ErrManifestUnknown)
	if tags, _, err := s.Tags(t.Context(), "app", "", -1); err != nil || strings.Join(tags, ",") != "v1" {
		t.Errorf("Tags = %q, %v", tags, err)
	}
}

func TestManifestSameDigestTwoRepos(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{})
	m := putManifest(t, s, "a", "shared", Digest{}, "t")
	putManifest(t, s, "a/b", "shared", Digest{}, "t")
	if err := s.DeleteManifest(t.Context(), "a", m.Digest); err != nil {
		t.Fatal(err)
	}
	if _, body, err := s.GetManifest(t.Context(), "a/b", m.Digest); err != nil || len(body) == 0 {
		t.Fatalf("a/b lost the manifest: %v", err)
	}
	if d, err := s.ResolveTag(t.Context(), "a/b", "t"); err != nil || d != m.Digest {
		t.Fatalf("a/b lost its tag: %v", err)
	}
}

func TestReferrers(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{})
	subject := putManifest(t, s, "app", "image", Digest{}, "latest")
	var refs []Manifest
	for _, n := range []string{"sig", "sbom", "attest"} {
		refs = append(refs, putManifest(t, s, "app", n, subject.Digest))
	}
	// Same subject, other repository: not listed under app.
	putManifest(t, s, "app2", "foreign", subject.Digest)

	got, _, err := s.Referrers(t.Context(), "app", subject.Digest, "", -1)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("Referrers = %d manifests, want 3", len(got))
	}
	for i := 1; i < len(got); i++ {
		if got[i-1].Digest.String() >= got[i].Digest.String() {
			t.Errorf("not ordered by digest: %s, %s", got[i-1].Digest, got[i].Digest)
		}
	}
	for _, m := range got {
		if m.Subject != subject.Digest || !strings.HasPrefix(m.ArtifactType, "application/x.") || m.Annotations["n"] == "" {
			t.Errorf("referrer = %+v", m)
		}
	}

	// Unknown subject: empty, not an error.
	if got, _, err := s.Referrers(t.Context(), "app", digestOf([]byte("nothing")), "", -1); err != nil || got == nil || len(got) != 0 {
		t.Errorf("Referrers(unknown) = %v, %v", got, err)
	}
	if got, _, err := s.Referrers(t.Context(), "nosuchrepo", subject.Digest, "", -1); err != nil || len(got) != 0 {
		t.Errorf("Referrers(unknown repo) = %v, %v", got, err)
	}

	// Deleting a referrer removes its entry; deleting the subject does not
	// touch the referrers (the spec keeps them).
	if err := s.DeleteManifest(t.Context(), "app", refs[0].Digest); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := s.Referrers(t.Context(), "app", subject.Digest, "", -1); len(got) != 2 {
		t.Errorf("after delete: %d referrers, want 2", len(got))
	}

	// A re-push with another subject moves the entry.
	other := putManifest(t, s, "app", "other", Digest{})
	body := manifestBody("sbom", subject.Digest)
	m := Manifest{Digest: digestOf(body), Subject: other.Digest}
	if err := s.PutManifest(t.Context(), "app", m, body, nil); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := s.Referrers(t.Context(), "app", subject.Digest, "", -1); len(got) != 1 {
		t.Errorf("old subject: %d referrers, want 1", len(got))
	}
	if got, _, _ := s.Referrers(t.Context(), "app", other.Digest, "", -1); len(got) != 1 || got[0].Digest != m.Digest {
		t.Errorf("new subject: %+v", got)
	}
}

func TestTagsPaging(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{})
	putManifest(t, s, "a", "m", Digest{}, "b", "a", "c", "d")
	// Names that share a prefix with "a" must never leak into its listing.
	putManifest(t, s, "a/b", "m", Digest{}, "x")
	putManifest(t, s, "a-b", "m", Digest{}, "y")
	putManifest(t, s, "ab", "m", Digest{}, "z")

	tests := []struct {
		last     string
		n        int
		want     string
		wantMore bool
	}{
		{"", -1, "a,b,c,d", false},
		{"", 2, "a,b", true},
		{"b", 2, "c,d", false},
		{"b", 1, "c", true},
		{"a", -1, "b,c,d", false},
		{"bb", -1, "c,d", false}, // last need not exist
		{"d", -1, "", false},
		{"zzz", 5, "", false}, // beyond the end
		{"", 0, "", true},
		{"d", 0, "", false},
		{"", 4, "a,b,c,d", false},
		{"", 100, "a,b,c,d", false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("last=%q,n=%d", tt.last, tt.n), func(t *testing.T) {
			t.Parallel()
			got, more, err := s.Tags(t.Context(), "a", tt.last, tt.n)
			if err != nil {
				t.Fatal(err)
			}
			if got == nil {
				t.Error("nil page")
			}
			if strings.Join(got, ",") != tt.want || more != tt.wantMore {
				t.Errorf("Tags = %q, more=%v; want %q, more=%v", got, more, tt.want, tt.wantMore)
			}
		})
	}
	for repo, want := range map[string]string{"a/b": "x", "a-b": "y", "ab": "z"} {
		if got, _, err := s.Tags(t.Context(), repo, "", -1); err != nil || strings.Join(got, ",") != want {
			t.Errorf("Tags(%s) = %q, %v", repo, got, err)
		}
	}
}

func TestRepositoriesPaging(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{})
	if got, more, err := s.Repositories(t.Context(), "", -1); err != nil || len(got) != 0 || more {
		t.Fatalf("empty store: %q, %v, %v", got, more, err)
	}
	d := mustPut(t, s, []byte("x"))
	for _, r := range []string{"b", "a/b", "a", "a-b", "c/d/e"} {
		mustLink(t, s, r, d)
	}
	// Lexical by byte: "-" < "/".
	all := "a,a-b,a/b,b,c/d/e"
	tests := []struct {
		last     string
		n        int
		want     string
		wantMore bool
	}{
		{"", -1, all, false},
		{"", 2, "a,a-b", true},
		{"a-b", 2, "a/b,b", true},
		{"b", 10, "c/d/e", false},
		{"c/d/e", 10, "", false},
		{"z", 1, "", false},
		{"", 0, "", true},
		{"a", 1, "a-b", true},
	}
	for _, tt := range tests {
		got, more, err := s.Repositories(t.Context(), tt.last, tt.n)
		if err != nil || strings.Join(got, ",") != tt.want || more != tt.wantMore {
			t.Errorf("Repositories(%q, %d) = %q, %v, %v; want %q, %v", tt.last, tt.n, got, more, err, tt.want, tt.wantMore)
		}
	}
}

// TestListingsStopWithContext: a listing ends with its context's error
// once the context ends, instead of walking on for a client that left.
func TestListingsStopWithContext(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{})
	subject := putManifest(t, s, "a", "subject", Digest{}, "v1")
	putManifest(t, s, "a", "referrer", subject.Digest)
	layer := mustPut(t, s, []byte("layer"))
	mustLink(t, s, "a", layer)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, _, err := s.Tags(ctx, "a", "", -1)
	wantErr(t, "Tags", err, context.Canceled)
	_, _, err = s.Repositories(ctx, "", -1)
	wantErr(t, "Repositories", err, context.Canceled)
	_, _, err = s.Referrers(ctx, "a", subject.Digest, "", -1)
	wantErr(t, "Referrers", err, context.Canceled)
	_, err = s.ReposWithBlob(ctx, layer, 10)
	wantErr(t, "ReposWithBlob", err, context.Canceled)
	// A page that is full before the context is asked still answers:
	// nothing is left to walk.
	if tags, more, err := s.Tags(ctx, "a", "", 0); err != nil || len(tags) != 0 || !more {
		t.Errorf("Tags(n=0) = %q, %v, %v", tags, more, err)
	}
}

// TestDeleteManifestManyTags: a manifest may carry any number of tags (CI
// that tags every build of an image that did not change); deleting it
// deletes them all, however many one badger transaction can hold (a few
// thousand writes with this store's memtables).
func TestDeleteManifestManyTags(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{})
	const n = 10_000
	var m Manifest
	tags := make([]string, 0, 500)
	for i := range n {
		tags = append(tags, fmt.Sprintf("t%05d", i))
		if len(tags) == cap(tags) {
			m = putManifest(t, s, "app", "tagged", Digest{}, tags...)
			tags = tags[:0]
		}
	}
	putManifest(t, s, "app", "other", Digest{}, "keep")
	if err := s.DeleteManifest(t.Context(), "app", m.Digest); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.GetManifest(t.Context(), "app", m.Digest); err == nil {
		t.Fatal("the manifest is still there")
	}
	got, _, err := s.Tags(t.Context(), "app", "", -1)
	if err != nil || len(got) != 1 || got[0] != "keep" {
		t.Fatalf("%d tags after the delete (%v), want [keep]", len(got), err)
	}
}
