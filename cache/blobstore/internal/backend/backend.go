// Package backend is what every blob backend does alike to keep the
// blobstore contract: check bytes against what the caller claimed, make
// and recognise session ids, and carry a sha256 state between requests.
// One copy here keeps the backends from drifting apart on any of it.
package backend

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
)

// Verify checks n bytes hashed into h against what the caller claimed:
// the digest d and, when size >= 0, the length (ErrSizeMismatch,
// ErrDigestMismatch).
func Verify(d blobstore.Digest, size, n int64, h hash.Hash) error {
	if size >= 0 && n != size {
		return fmt.Errorf("%w: declared %d, got %d bytes", blobstore.ErrSizeMismatch, size, n)
	}
	if got := blobstore.FromHash(d.Algorithm, h); got != d {
		return fmt.Errorf("%w: want %s, got %s", blobstore.ErrDigestMismatch, d, got)
	}
	return nil
}

// RandomID returns 128 random bits as 32 lower-case hex characters:
// unguessable, and safe in a URL, a file name and an object key.
func RandomID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("random: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// IsID reports whether s has the form RandomID gives. A state read back
// from the metadata store is checked with it before its id names a file
// or a key.
func IsID(s string) bool {
	if len(s) != 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// MarshalSHA256 returns the state of h, a sha256 hash, for a session's
// State.
func MarshalSHA256(h hash.Hash) ([]byte, error) {
	b, err := h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("hash state: %w", err)
	}
	return b, nil
}

// RestoreSHA256 is a sha256 hash in the state MarshalSHA256 gave.
func RestoreSHA256(state []byte) (hash.Hash, error) {
	h := sha256.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(state); err != nil {
		return nil, fmt.Errorf("hash state: %w", err)
	}
	return h, nil
}

// CloneSHA256 is a copy of h, a sha256 hash, that an Append feeds while h
// stays as it was in case the Append fails.
func CloneSHA256(h hash.Hash) (hash.Hash, error) {
	b, err := MarshalSHA256(h)
	if err != nil {
		return nil, err
	}
	return RestoreSHA256(b)
}

// SessionState is what every backend's session state holds; a backend
// embeds it in its own (JSON flattens it) and adds where its bytes are.
type SessionState struct {
	Version int    `json:"v"`
	ID      string `json:"id"`
	Size    int64  `json:"size"`
	// SHA256 is the marshalled sha256 state over the Size bytes.
	SHA256 []byte `json:"sha256"`
	// Ended: committed or cancelled; its bytes are gone.
	Ended bool `json:"ended,omitempty"`
}

// sha256StateLen and sha256Magic describe Go's marshalled sha256 state:
// magic, eight words of hash, a block of pending bytes, and the count of
// bytes hashed as a big-endian uint64 at the end.
const (
	sha256StateLen = 4 + 8*4 + sha256.BlockSize + 8
	sha256Magic    = "sha\x03"
)

// Check refuses a state read back that this backend cannot take: another
// version, an ended session, an id not of RandomID's form (it names a
// file or a key), a negative size, a hash state that is not sha256's or
// counts another number of bytes than Size.
func (st *SessionState) Check(version int) error {
	switch {
	case st.Version != version:
		return fmt.Errorf("state version %d", st.Version)
	case st.Ended:
		return errors.New("ended")
	case !IsID(st.ID):
		return errors.New("bad id")
	case st.Size < 0:
		return errors.New("negative size")
	case len(st.SHA256) != sha256StateLen || string(st.SHA256[:len(sha256Magic)]) != sha256Magic:
		return errors.New("bad hash state")
	case binary.BigEndian.Uint64(st.SHA256[sha256StateLen-8:]) != uint64(st.Size):
		return errors.New("hash state and size disagree")
	}
	return nil
}

// CheckAppend refuses a chunk to an ended session (ErrSessionUnknown) or
// at another offset than Size (ErrOffsetMismatch).
func (st *SessionState) CheckAppend(offset int64) error {
	if st.Ended {
		return fmt.Errorf("%w: %s", blobstore.ErrSessionUnknown, st.ID)
	}
	if offset != st.Size {
		return fmt.Errorf("%w: session at %d, chunk at %d", blobstore.ErrOffsetMismatch, st.Size, offset)
	}
	return nil
}

// DecodeState reads state into st, a pointer to a backend's own state
// that embeds common, refusing fields st does not have (so another
// backend's state is refused), has check judge it, and returns the sha256
// hash it carries. Every refusal is ErrSessionUnknown.
func DecodeState(state []byte, st any, common *SessionState, check func() error) (hash.Hash, error) {
	dec := json.NewDecoder(bytes.NewReader(state))
	dec.DisallowUnknownFields()
	if err := dec.Decode(st); err != nil {
		return nil, fmt.Errorf("%w: %w", blobstore.ErrSessionUnknown, err)
	}
	if err := check(); err != nil {
		return nil, fmt.Errorf("%w: %w", blobstore.ErrSessionUnknown, err)
	}
	h, err := RestoreSHA256(common.SHA256)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", blobstore.ErrSessionUnknown, err)
	}
	return h, nil
}
