package metastore

// The checks every backend makes before it touches its engine, here so
// that all backends refuse the same inputs with the same errors.

import (
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
)

// MaxNameLength bounds names in bytes. It is far above the spec's limits
// (255 characters for a repository, 128 for a tag) and far below what an
// index entry can hold.
const MaxNameLength = 512

// CheckName refuses what no backend can key: the empty name, a name
// longer than MaxNameLength, invalid UTF-8 and NUL (PostgreSQL's text
// holds neither; badger's keys use NUL as a separator).
func CheckName(kind, name string) error {
	if name == "" || len(name) > MaxNameLength || !utf8.ValidString(name) || strings.ContainsRune(name, 0) {
		return fmt.Errorf("%w: %s %q", ErrNameInvalid, kind, truncate(name))
	}
	return nil
}

// CheckText refuses, for an optional text field such as a media type,
// what CheckName refuses except emptiness, up to max bytes.
func CheckText(kind, s string, max int) error {
	if len(s) > max || !utf8.ValidString(s) || strings.ContainsRune(s, 0) {
		return fmt.Errorf("%w: %s %q", ErrNameInvalid, kind, truncate(s))
	}
	return nil
}

// CheckDigest is Digest.Validate wrapped for a message naming what it is.
func CheckDigest(kind string, d Digest) error {
	if err := d.Validate(); err != nil {
		return fmt.Errorf("%s: %w", kind, err)
	}
	return nil
}

// truncate keeps a hostile name from filling a log line.
func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// maxMediaType bounds media and artifact types: a header's worth.
const maxMediaType = 1024

// CheckLast refuses a paging cursor no backend can compare (NUL, invalid
// UTF-8); any other is a comparison only.
func CheckLast(last string) error { return CheckText("last", last, 1<<16) }

// CheckRepoDigest checks a repository and a digest of kind in it.
func CheckRepoDigest(repo, kind string, d Digest) error {
	if err := CheckName("repository", repo); err != nil {
		return err
	}
	return CheckDigest(kind, d)
}

// CheckTag checks a repository and a tag in it.
func CheckTag(repo, tag string) error {
	if err := CheckName("repository", repo); err != nil {
		return err
	}
	return CheckName("tag", tag)
}

// CheckMove checks the arguments of Tags.MoveTag.
func CheckMove(repo, tag string, from, to Digest) error {
	if err := CheckTag(repo, tag); err != nil {
		return err
	}
	if err := CheckDigest("manifest", to); err != nil {
		return err
	}
	if from.IsZero() {
		return nil
	}
	return CheckDigest("manifest", from)
}

// CheckManifest checks the arguments of Manifests.PutManifest, the bytes
// against the digest included, and returns m.Refs as a sorted set of
// strings.
func CheckManifest(repo string, m Manifest, body []byte, tags []string) ([]string, error) {
	if err := CheckRepoDigest(repo, "manifest", m.Digest); err != nil {
		return nil, err
	}
	for _, t := range tags {
		if err := CheckName("tag", t); err != nil {
			return nil, err
		}
	}
	if !m.Subject.IsZero() {
		if err := CheckDigest("subject", m.Subject); err != nil {
			return nil, err
		}
	}
	if err := CheckText("media type", m.MediaType, maxMediaType); err != nil {
		return nil, err
	}
	if err := CheckText("artifact type", m.ArtifactType, maxMediaType); err != nil {
		return nil, err
	}
	refs := make([]string, 0, len(m.Refs))
	for _, r := range m.Refs {
		if err := CheckDigest("reference", r); err != nil {
			return nil, err
		}
		refs = append(refs, r.String())
	}
	if got := blobstore.FromBytes(m.Digest.Algorithm, body); got != m.Digest {
		return nil, fmt.Errorf("%w: manifest %s, bytes %s", ErrDigestMismatch, m.Digest, got)
	}
	slices.Sort(refs)
	return slices.Compact(refs), nil
}

// CheckUsage checks a repository and an owner (empty: nobody).
func CheckUsage(repo, owner string) error {
	if err := CheckName("repository", repo); err != nil {
		return err
	}
	if owner == "" {
		return nil
	}
	return CheckName("owner", owner)
}

// NewUpload checks a session to create and returns it as created:
// Size 0, Version 1, Updated = Started, State never nil.
func NewUpload(u Upload) (Upload, error) {
	if err := CheckName("upload", u.ID); err != nil {
		return Upload{}, err
	}
	if err := CheckUsage(u.Repo, u.Owner); err != nil {
		return Upload{}, err
	}
	if u.State == nil {
		u.State = []byte{}
	}
	u.Size, u.Version, u.Updated = 0, 1, u.Started
	return u, nil
}
