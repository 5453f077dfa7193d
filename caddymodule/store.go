package caddymodule

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/dustin/go-humanize"

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
	// readOnly and writable count the handlers of the provisioned
	// configs that use the store, by their read_only: GC pauses while
	// all are read-only (pauseGC).
	readOnly, writable int
}

// hold counts one more handler using the store; each call must be matched
// by one release with the same readOnly.
func (s *sharedStore) hold(readOnly bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if readOnly {
		s.readOnly++
	} else {
		s.writable++
	}
	s.pauseGC()
}

// release counts one handler fewer (its config was cleaned up).
func (s *sharedStore) release(readOnly bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if readOnly {
		s.readOnly--
	} else {
		s.writable--
	}
	s.pauseGC()
}

// pauseGC pauses the store's background GC while every handler that uses
// it is read-only: deleting is a write, and read-only is what operators
// set while they maintain or copy the storage. One writable handler (a
// read-only public site beside an internal one that pushes) keeps GC
// running, as its deletes and tag moves leave garbage. During a reload
// both configs count, so the new setting applies once the old config is
// cleaned up. Called with mu held.
func (s *sharedStore) pauseGC() {
	if s.st != nil {
		s.st.PauseGC(s.readOnly > 0 && s.writable == 0)
	}
}

// storeSettings are the cache.Options a store was created with.
type storeSettings cache.Options

// differences lists, by their config names, the settings o asks for that
// differ from those the store was created with, each as
// "name: <in use> -> <asked for>" (loggers and observers are not
// compared). Empty: the same behaviour.
func (s storeSettings) differences(o cache.Options) []string {
	var diff []string
	add := func(name string, was, is any) {
		if was != is {
			diff = append(diff, fmt.Sprintf("%s: %v -> %v", name, was, is))
		}
	}
	add("metadata_dir", s.MetadataDir, o.MetadataDir)
	add("upload_ttl", s.UploadTTL, o.UploadTTL)
	add("gc_interval", s.GCInterval, o.GCInterval)
	add("gc_grace", s.GCGrace, o.GCGrace)
	add("gc_full_interval", s.GCFullInterval, o.GCFullInterval)
	add("scrub_interval", s.ScrubInterval, o.ScrubInterval)
	add("scrub_rate", s.ScrubRate, o.ScrubRate)
	add("storage_reserve", reserveString(s.Reserve), reserveString(o.Reserve))
	return diff
}

// reserveString is a SpaceReserve as storage_reserve would say it.
func reserveString(r cache.SpaceReserve) string {
	switch {
	case r.Bytes < 0:
		return "off"
	case r.Percent > 0 && r.Bytes > 0:
		return fmt.Sprintf("%s %g%%", humanize.IBytes(uint64(r.Bytes)), r.Percent)
	case r.Percent > 0:
		return fmt.Sprintf("%g%%", r.Percent)
	}
	return humanize.IBytes(uint64(r.Bytes))
}

// acquireStore returns the shared store of opts.Dir, creating the (still
// closed) entry if it is the first reference. Each call must be matched by
// one dropStore(opts.Dir).
func acquireStore(opts cache.Options) (*sharedStore, error) {
	v, _, err := stores.LoadOrNew(opts.Dir, func() (caddy.Destructor, error) {
		return &sharedStore{opts: storeSettings(opts)}, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*sharedStore), nil
}

// storeLife orders opening a database after the close of the one it
// replaces, folder by folder. The last reference to a store may go after
// a newer config has taken a new one of the same folder (a reload away
// from a folder whose old requests still run, then back: inflight.go);
// badger's directory lock would refuse the new open while the old store
// still closes. One lock per folder (badger's directory): a close that
// never ends (its folder removed or its disk gone under it, where badger
// retries its last flush for ever) holds up only that folder's next open,
// not every config load of the process.
func storeLife(badgerDir string) *sync.Mutex {
	key := filepath.Clean(badgerDir)
	if abs, err := filepath.Abs(key); err == nil {
		key = abs
	}
	m, _ := storeLives.LoadOrStore(key, new(sync.Mutex))
	return m.(*sync.Mutex)
}

var storeLives sync.Map // badger's directory -> *sync.Mutex

// dropStore drops one reference to the shared store s (closing it if it
// was the last) with its folder's storeLife held.
func dropStore(s *sharedStore) error {
	life := storeLife(cache.Options(s.opts).DatabaseDir())
	life.Lock()
	defer life.Unlock()
	_, err := stores.Delete(s.opts.Dir)
	return err
}

// open opens the store unless it is open already. A failed open is not
// remembered: the next call tries again.
func (s *sharedStore) open() (*cache.Store, error) {
	if st := s.opened(); st != nil {
		return st, nil
	}
	life := storeLife(cache.Options(s.opts).DatabaseDir())
	life.Lock() // first, as dropStore takes it before s.mu
	defer life.Unlock()
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
	s.pauseGC()
	return st, nil
}

// opened is the store if it is open, else nil.
func (s *sharedStore) opened() *cache.Store {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st
}

// storeCloseWait bounds how long dropping a store's last reference waits
// for its close. Caddy drops it while it loads the next config, under its
// config lock: a close that never ends (the folder removed or its disk
// gone under it, where badger retries its last flush for ever) would hang
// that reload, every reload after it and the process's stop. Past the
// wait the close goes on in the background; the folder stays locked by
// the old database until it ends (a config opening it again is told so).
var storeCloseWait = 30 * time.Second

// Destruct closes the store if it was opened; the UsagePool calls it when
// the last reference goes.
func (s *sharedStore) Destruct() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.st == nil {
		return nil
	}
	st := s.st
	s.st = nil
	if err := closeWithin(st.Close); err != nil {
		return fmt.Errorf("closing storage %s: %w", s.opts.Dir, err)
	}
	return nil
}

// closeWithin runs close and waits for it up to storeCloseWait.
func closeWithin(close func() error) error {
	closed := make(chan error, 1)
	go func() { closed <- close() }()
	select {
	case err := <-closed:
		return err
	case <-time.After(storeCloseWait):
		return fmt.Errorf("not done after %s (is its folder still there?); it goes on in the background", storeCloseWait)
	}
}

var (
	_ caddy.Destructor = (*sharedStore)(nil)
	// The registry runs on interfaces; this is the store wired in.
	_ registry.Store = (*cache.Store)(nil)
)

// readOnlyStorage reports whether err comes from a read-only filesystem
// (remounted so by hand, or by the kernel after disk errors): like a full
// one, the operator's to fix without a config change, after which the
// store opens with the next request.
func readOnlyStorage(err error) bool { return errors.Is(err, syscall.EROFS) }
