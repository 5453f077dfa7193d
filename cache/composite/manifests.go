package composite

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/metastore"
)

// PutManifest stores body as manifest m of repo and points tags at it, in
// one transaction of the metadata store. What the manifest references is
// read from its bytes once, here, so GC never reads manifests again.
func (s *Store) PutManifest(ctx context.Context, repo string, m cache.Manifest, body []byte, tags []string) error {
	return mapErr(s.meta.PutManifest(ctx, repo, metaManifest(m, body), body, tags))
}

// CreateManifest is PutManifest only if it moves no tag and retypes no
// manifest (cache.ErrTagMoved, cache.ErrManifestRetyped), checked in the
// metadata store's write transaction, so across replicas.
func (s *Store) CreateManifest(ctx context.Context, repo string, m cache.Manifest, body []byte, tags []string) error {
	return mapErr(s.meta.CreateManifest(ctx, repo, metaManifest(m, body), body, tags))
}

// metaManifest is the metadata's record of m, whose bytes are body.
func metaManifest(m cache.Manifest, body []byte) metastore.Manifest {
	return metastore.Manifest{
		Digest:       m.Digest,
		MediaType:    m.MediaType,
		Subject:      m.Subject,
		ArtifactType: m.ArtifactType,
		Annotations:  m.Annotations,
		Refs:         cache.ManifestRefs(body),
		Linked:       m.Linked,
	}
}

func manifest(m metastore.Manifest) cache.Manifest {
	return cache.Manifest{
		Digest:       m.Digest,
		MediaType:    m.MediaType,
		Size:         m.Size,
		Subject:      m.Subject,
		ArtifactType: m.ArtifactType,
		Annotations:  m.Annotations,
	}
}

// GetManifest returns repo's manifest d with its exact bytes.
func (s *Store) GetManifest(ctx context.Context, repo string, d cache.Digest) (cache.Manifest, []byte, error) {
	m, body, err := s.meta.ManifestBody(ctx, repo, d)
	if err != nil {
		return cache.Manifest{}, nil, s.damagedAsUnknown(repo, d, err)
	}
	return manifest(m), body, nil
}

// damagedAsUnknown answers a manifest whose record or bytes do not read
// back whole as unknown, as the single node answers a manifest whose file
// is gone, and logs it: a client then pushes it again, which writes it
// whole, where an error would fail every pull and push of it.
func (s *Store) damagedAsUnknown(repo string, d cache.Digest, err error) error {
	if !errors.Is(err, metastore.ErrDamaged) {
		return mapErr(err)
	}
	s.logDamaged(repo, d, err)
	return fmt.Errorf("%w: %w", cache.ErrManifestUnknown, err)
}

// logDamaged logs manifest d of repo, answered as unknown (or left out of
// a list of referrers) because err says it is damaged.
func (s *Store) logDamaged(repo string, d cache.Digest, err error) {
	s.log.Error("manifest damaged in the metadata; answered as unknown until it is pushed again",
		zap.String("repo", repo), zap.String("digest", d.String()), zap.Error(err))
}

// StatManifest returns repo's manifest d without its bytes.
func (s *Store) StatManifest(ctx context.Context, repo string, d cache.Digest) (cache.Manifest, error) {
	m, err := s.meta.Manifest(ctx, repo, d)
	if err != nil {
		return cache.Manifest{}, s.damagedAsUnknown(repo, d, err)
	}
	return manifest(m), nil
}

// DeleteManifest removes manifest d and the tags pointing at it.
func (s *Store) DeleteManifest(ctx context.Context, repo string, d cache.Digest) error {
	return mapErr(s.meta.DeleteManifest(ctx, repo, d))
}

// Referrers lists the manifests of repo whose subject is d.
func (s *Store) Referrers(ctx context.Context, repo string, d cache.Digest, after string, n int) ([]cache.Manifest, bool, error) {
	ms, more, err := s.meta.Referrers(ctx, repo, d, after, n)
	if err != nil {
		return nil, false, mapErr(err)
	}
	out := make([]cache.Manifest, len(ms))
	for i, m := range ms {
		out[i] = manifest(m)
	}
	return out, more, nil
}

// ResolveTag returns the digest tag points at.
func (s *Store) ResolveTag(ctx context.Context, repo, tag string) (cache.Digest, error) {
	t, err := s.meta.Tag(ctx, repo, tag)
	if err != nil {
		return cache.Digest{}, mapErr(err)
	}
	return t.Digest, nil
}

// TagInfo returns what tag points at and when a mirror last confirmed it.
func (s *Store) TagInfo(ctx context.Context, repo, tag string) (cache.TagInfo, error) {
	t, err := s.meta.Tag(ctx, repo, tag)
	if err != nil {
		return cache.TagInfo{}, mapErr(err)
	}
	return cache.TagInfo{Digest: t.Digest, Fetched: t.Fetched}, nil
}

// SetTagFetched records that a mirror confirmed tag upstream at t.
func (s *Store) SetTagFetched(ctx context.Context, repo, tag string, t time.Time) error {
	return mapErr(s.meta.SetTagFetched(ctx, repo, tag, t))
}

// DeleteTag removes one tag; the manifest stays.
func (s *Store) DeleteTag(ctx context.Context, repo, tag string) error {
	return mapErr(s.meta.DeleteTag(ctx, repo, tag))
}

// Tags lists repo's tags after last, at most n.
func (s *Store) Tags(ctx context.Context, repo, last string, n int) ([]string, bool, error) {
	p, err := s.meta.Tags(ctx, repo, last, n)
	if err != nil {
		return nil, false, mapErr(err)
	}
	return p.Names, p.More, nil
}

// Repositories lists repositories after last, at most n.
func (s *Store) Repositories(ctx context.Context, last string, n int) ([]string, bool, error) {
	p, err := s.meta.Repositories(ctx, last, n)
	if err != nil {
		return nil, false, mapErr(err)
	}
	return p.Names, p.More, nil
}
