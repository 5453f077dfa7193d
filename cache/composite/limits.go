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

// SetUploadLimits sets the limits on sessions, the bytes they hold and
// blob sizes. Session counts and bytes hold across replicas: the
// metadata store counts and creates (or reserves) in one step. Bytes of
// monolithic pushes (PutBlob) are not counted: they hold no session.
func (s *Store) SetUploadLimits(l cache.UploadLimits) { s.limits.v.Store(&l) }
