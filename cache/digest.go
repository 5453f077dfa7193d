package cache

import (
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"hash"
	"strings"
)

// Algorithm is a digest algorithm the store accepts.
type Algorithm string

const (
	SHA256 Algorithm = "sha256"
	SHA512 Algorithm = "sha512"
)

// hexLen is the length of the lower-case hex encoding for each algorithm.
func (a Algorithm) hexLen() int {
	switch a {
	case SHA256:
		return 64
	case SHA512:
		return 128
	}
	return 0
}

// New returns a fresh hash for the algorithm.
func (a Algorithm) New() hash.Hash {
	if a == SHA512 {
		return sha512.New()
	}
	return sha256.New()
}

// Digest is a validated content digest such as "sha256:<64 hex>". Only
// sha256 and sha512 are accepted, with lower-case hex of the exact length,
// so a Digest is always safe to use as a file name.
type Digest struct {
	Algorithm Algorithm
	Hex       string
}

// ErrDigestInvalid is returned by ParseDigest for anything that is not a
// digest this store can address.
var ErrDigestInvalid = errors.New("invalid digest")

// ErrDigestUnsupported is returned by ParseDigest for a well-formed digest of
// an algorithm the store does not implement.
var ErrDigestUnsupported = errors.New("unsupported digest algorithm")

// ParseDigest checks s strictly and returns it as a Digest.
func ParseDigest(s string) (Digest, error) {
	alg, hex, ok := strings.Cut(s, ":")
	if !ok || alg == "" || hex == "" {
		return Digest{}, fmt.Errorf("%w: %q", ErrDigestInvalid, s)
	}
	// The spec's grammar for the algorithm part; anything else is invalid,
	// a well-formed but unknown algorithm is unsupported.
	for i := 0; i < len(alg); i++ {
		c := alg[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '.' || c == '_' || c == '-') {
			return Digest{}, fmt.Errorf("%w: %q", ErrDigestInvalid, s)
		}
	}
	a := Algorithm(alg)
	n := a.hexLen()
	if n == 0 {
		return Digest{}, fmt.Errorf("%w: %q", ErrDigestUnsupported, alg)
	}
	if len(hex) != n {
		return Digest{}, fmt.Errorf("%w: %q", ErrDigestInvalid, s)
	}
	for i := 0; i < len(hex); i++ {
		c := hex[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return Digest{}, fmt.Errorf("%w: %q", ErrDigestInvalid, s)
		}
	}
	return Digest{Algorithm: a, Hex: hex}, nil
}

// FromBytes returns the digest of b under alg.
func FromBytes(alg Algorithm, b []byte) Digest {
	h := alg.New()
	h.Write(b)
	return FromHash(alg, h)
}

// FromHash returns the digest held by h, which must be alg's hash.
func FromHash(alg Algorithm, h hash.Hash) Digest {
	return Digest{Algorithm: alg, Hex: fmt.Sprintf("%x", h.Sum(nil))}
}

// String returns the canonical "alg:hex" form.
func (d Digest) String() string { return string(d.Algorithm) + ":" + d.Hex }

// IsZero reports whether d is the zero Digest.
func (d Digest) IsZero() bool { return d.Hex == "" }
