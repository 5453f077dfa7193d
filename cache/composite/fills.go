package composite

import (
	"context"
	"errors"

	"github.com/caddy-oci/caddy-oci/cache"
)

// ErrNoFills: this store does not fill mirrors yet. Configuration refuses
// mirrors on it, so a request never gets here; the error says why if one
// does.
var ErrNoFills = errors.New("mirror fills are not supported on this storage yet")

// FillAdmitted refuses: fills across replicas (a lease per digest, the
// holder streaming to its clients while it writes the blob store) are
// the next step of the scale-out work.
func (s *Store) FillAdmitted(context.Context, string, cache.Digest, cache.FillSource, cache.FillAdmit) (cache.Fill, bool, error) {
	return nil, false, ErrNoFills
}

// Filling: no fill is ever in progress here.
func (s *Store) Filling(context.Context, cache.Digest) cache.Fill { return nil }

// Hold and Touch feed a size-limited mirror cache, which needs mirrors.
func (s *Store) Hold(cache.Digest) (release func()) { return func() {} }

// Touch: see Hold.
func (s *Store) Touch(cache.Digest) {}
