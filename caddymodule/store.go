package caddymodule

import (
	"fmt"
	"sync"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/registry"
)

// Why stores are shared and opened late:
//
// badger locks its directory and refuses a second Open of it, in this
// process or in another one. A config reload provisions the new handlers
// while the old ones still serve, so one store per storage folder is shared
// through a UsagePool, keyed by the folder's absolute path, and lives as
// long as any config references it. `caddy validate` runs in its own
// process next to the running server, so provisioning must not open the
// store at all: the oci app opens it in Start, which Caddy calls only when
// it runs a config, and a request that arrives before (apps start in no
// fixed order) opens it itself.

// stores holds one *sharedStore per absolute storage folder.
var stores = caddy.NewUsagePool()

// sharedStore is a cache.Store opened on first use and closed by the
// UsagePool when the last config that uses the folder is cleaned up.
type sharedStore struct {
	opts storeSettings

	mu sync.Mutex
	st *cache.Store
}

// storeSettings are the cache.Options a store was created with.
type storeSettings cache.Options

// sameSettings reports whether o asks for the same behaviour (loggers and
// observers are not compared).
func (s storeSettings) sameSettings(o cache.Options) bool {
	return s.Dir == o.Dir && s.UploadTTL == o.UploadTTL &&
		s.GCGrace == o.GCGrace && s.GCInterval == o.GCInterval &&
		s.GCFullInterval == o.GCFullInterval &&
		s.MetadataDir == o.MetadataDir && s.Reserve == o.Reserve
}

// acquireStore returns the shared store of opts.Dir, creating the (still
// closed) entry if it is the first reference. Each call must be matched by
// one stores.Delete(opts.Dir).
func acquireStore(opts cache.Options) (*sharedStore, error) {
	v, _, err := stores.LoadOrNew(opts.Dir, func() (caddy.Destructor, error) {
		return &sharedStore{opts: storeSettings(opts)}, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*sharedStore), nil
}

// open opens the store unless it is open already. A failed open is not
// remembered: the next call tries again.
func (s *sharedStore) open() (*cache.Store, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.st != nil {
		return s.st, nil
	}
	st, err := cache.Open(cache.Options(s.opts))
	if err != nil {
		return nil, fmt.Errorf("opening storage %s: %w", s.opts.Dir, err)
	}
	s.st = st
	return st, nil
}

// Destruct closes the store if it was opened; the UsagePool calls it when
// the last reference goes.
func (s *sharedStore) Destruct() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.st == nil {
		return nil
	}
	err := s.st.Close()
	s.st = nil
	if err != nil {
		return fmt.Errorf("closing storage %s: %w", s.opts.Dir, err)
	}
	return nil
}

var (
	_ caddy.Destructor = (*sharedStore)(nil)
	// The registry runs on interfaces; this is the store wired in.
	_ registry.Store = (*cache.Store)(nil)
)
