package blobstore

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strings"
)

// The digest types live here, not in package cache, because cache builds
// on blobstore and a backend must not import its caller; cache.Digest is
// an alias of this one.

// Algorithm is a digest algorithm the store accepts.
type Algorithm string

const (
	SHA256 Algorithm = "sha256"
	SHA512 Algorithm = "sha512"
)

// HexLen is the length of the lower-case hex encoding for each algorithm;
// 0 for an algorithm the store does not implement.
func (a Algorithm) HexLen() int {
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

// Digest is a content digest such as "sha256:<64 hex>". Only sha256 and
// sha512 are valid, with lower-case hex of the exact length, so a valid
// Digest is safe in a file name or an object key. Backends call Validate
// before using one, because the fields can be set by hand.
type Digest struct {
	Algorithm Algorithm
	Hex       string
}

// ErrDigestInvalid: not a digest the store can address.
var ErrDigestInvalid = errors.New("invalid digest")

// ErrDigestUnsupported: a well-formed digest of an algorithm the store does
// not implement.
var ErrDigestUnsupported = errors.New("unsupported digest algorithm")

// ParseDigest checks s strictly and returns it as a Digest.
func ParseDigest(s string) (Digest, error) {
	alg, hx, ok := strings.Cut(s, ":")
	if !ok || alg == "" || hx == "" {
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
	d := Digest{Algorithm: Algorithm(alg), Hex: hx}
	if d.Algorithm.HexLen() == 0 {
		return Digest{}, fmt.Errorf("%w: %q", ErrDigestUnsupported, alg)
	}
	if err := d.Validate(); err != nil {
		return Digest{}, err
	}
	return d, nil
}

// Validate reports ErrDigestInvalid unless d is a supported algorithm with
// lower-case hex of its exact length.
func (d Digest) Validate() error {
	n := d.Algorithm.HexLen()
	if n == 0 || len(d.Hex) != n {
		return fmt.Errorf("%w: %q", ErrDigestInvalid, d.String())
	}
	for i := 0; i < len(d.Hex); i++ {
		c := d.Hex[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return fmt.Errorf("%w: %q", ErrDigestInvalid, d.String())
		}
	}
	return nil
}

// FromBytes returns the digest of b under alg.
func FromBytes(alg Algorithm, b []byte) Digest {
	h := alg.New()
	h.Write(b)
	return FromHash(alg, h)
}

// FromHash returns the digest held by h, which must be alg's hash.
func FromHash(alg Algorithm, h hash.Hash) Digest {
	return Digest{Algorithm: alg, Hex: hex.EncodeToString(h.Sum(nil))}
}

// String returns the canonical "alg:hex" form.
func (d Digest) String() string { return string(d.Algorithm) + ":" + d.Hex }

// IsZero reports whether d is the zero Digest.
func (d Digest) IsZero() bool { return d.Hex == "" }
