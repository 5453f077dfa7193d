package composite

import (
	"sync/atomic"

	"github.com/caddy-oci/caddy-oci/cache"
)

// limitsBox holds the upload limits, set at provision and on reload while
// requests read them.
type limitsBox struct {
	v atomic.Pointer[cache.UploadLimits]
}

func (b *limitsBox) get() cache.UploadLimits {
	if l := b.v.Load(); l != nil {
		return *l
	}
	return cache.UploadLimits{}
}

// SetUploadLimits sets the limits on sessions and blob sizes. Per-owner
// and per-repository session counts hold across replicas (the metadata
// store counts and creates in one step); byte totals are not enforced
// on this store yet.
func (s *Store) SetUploadLimits(l cache.UploadLimits) { s.limits.v.Store(&l) }
