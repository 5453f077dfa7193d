package cache

import (
	"hash"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
)

// The digest types are the blob store's (package blobstore), so the store
// and its blob backends speak of one Digest; the names here keep callers
// of cache from having to know that.

// Algorithm is a digest algorithm the store accepts.
type Algorithm = blobstore.Algorithm

const (
	SHA256 = blobstore.SHA256
	SHA512 = blobstore.SHA512
)

// Digest is a validated content digest such as "sha256:<64 hex>". Only
// sha256 and sha512 are accepted, with lower-case hex of the exact length,
// so a Digest is always safe to use as a file name.
type Digest = blobstore.Digest

// ErrDigestInvalid is returned by ParseDigest for anything that is not a
// digest this store can address.
var ErrDigestInvalid = blobstore.ErrDigestInvalid

// ErrDigestUnsupported is returned by ParseDigest for a well-formed digest of
// an algorithm the store does not implement.
var ErrDigestUnsupported = blobstore.ErrDigestUnsupported

// ParseDigest checks s strictly and returns it as a Digest.
func ParseDigest(s string) (Digest, error) { return blobstore.ParseDigest(s) }

// FromBytes returns the digest of b under alg.
func FromBytes(alg Algorithm, b []byte) Digest { return blobstore.FromBytes(alg, b) }

// FromHash returns the digest held by h, which must be alg's hash.
func FromHash(alg Algorithm, h hash.Hash) Digest { return blobstore.FromHash(alg, h) }
