package caddymodule

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/registry"
	"github.com/caddy-oci/caddy-oci/registry/substore"
)

// StorageSettings are where a store keeps its data and how it collects
// its garbage: the settings of the same names at the top of oci_registry,
// which a SubStorage takes too.
type StorageSettings struct {
	// Storage is the store's folder (see Registry.Storage). A relative
	// path is relative to Caddy's working directory.
	Storage string `json:"storage,omitempty"`
	// MetadataDir is where its metadata database lives (see
	// Registry.MetadataDir). Default: the "meta" folder in Storage.
	MetadataDir string `json:"metadata_dir,omitempty"`
	// StorageReserve is the free space its filesystem keeps (see
	// Registry.StorageReserve).
	StorageReserve int64 `json:"storage_reserve,omitempty"`
	// StorageReservePercent is that reserve as a percentage of the
	// filesystem's size (see Registry.StorageReservePercent).
	StorageReservePercent float64 `json:"storage_reserve_percent,omitempty"`
	// UploadTTL is the longest an upload session lives (see
	// Registry.UploadTTL).
	UploadTTL caddy.Duration `json:"upload_ttl,omitempty"`
	// GCInterval is how often its garbage is collected; negative: never
	// (see Registry.GCInterval).
	GCInterval caddy.Duration `json:"gc_interval,omitempty"`
	// GCGrace protects its young content from collection (see
	// Registry.GCGrace).
	GCGrace caddy.Duration `json:"gc_grace,omitempty"`
	// GCFullInterval is how often a collection examines all of it (see
	// Registry.GCFullInterval).
	GCFullInterval caddy.Duration `json:"gc_full_interval,omitempty"`
	// ScrubInterval is how often its blobs are read and hashed again;
	// negative: never (see Registry.ScrubInterval).
	ScrubInterval caddy.Duration `json:"scrub_interval,omitempty"`
	// ScrubRate is a scrub pass's pace in bytes per second (see
	// Registry.ScrubRate).
	ScrubRate int64 `json:"scrub_rate,omitempty"`
}

// SubStorage keeps the repositories under a name prefix in a store of
// their own (zot's storage sub-paths): its own folder, metadata database,
// reserve, upload sessions and garbage collection, e.g. a team's images
// on another disk, or a mirror's cache (a prefix equal to the mirror's)
// collected more eagerly than pushed images. Settings left out are the
// top level's; storage is required.
type SubStorage struct {
	// Prefix is one or more whole name components: "team" holds "team"
	// and "team/app", not "teams/app". Prefixes must not nest.
	Prefix string `json:"prefix"`

	StorageSettings
}

// storageSettings are the top level's settings as a StorageSettings.
func (rg *Registry) storageSettings() StorageSettings {
	return StorageSettings{
		Storage:               rg.Storage,
		MetadataDir:           rg.MetadataDir,
		StorageReserve:        rg.StorageReserve,
		StorageReservePercent: rg.StorageReservePercent,
		UploadTTL:             rg.UploadTTL,
		GCInterval:            rg.GCInterval,
		GCGrace:               rg.GCGrace,
		GCFullInterval:        rg.GCFullInterval,
		ScrubInterval:         rg.ScrubInterval,
		ScrubRate:             rg.ScrubRate,
	}
}

// under returns s with what it leaves out taken from top (but the folder).
func (s StorageSettings) under(top StorageSettings) StorageSettings {
	if s.StorageReserve == 0 && s.StorageReservePercent == 0 {
		s.StorageReserve, s.StorageReservePercent = top.StorageReserve, top.StorageReservePercent
	}
	for _, f := range []struct{ own, top *caddy.Duration }{
		{&s.UploadTTL, &top.UploadTTL}, {&s.GCInterval, &top.GCInterval},
		{&s.GCGrace, &top.GCGrace}, {&s.GCFullInterval, &top.GCFullInterval},
		{&s.ScrubInterval, &top.ScrubInterval},
	} {
		if *f.own == 0 {
			*f.own = *f.top
		}
	}
	if s.ScrubRate == 0 {
		s.ScrubRate = top.ScrubRate
	}
	return s
}

// validate checks the settings that need no folder.
func (s StorageSettings) validate() error {
	if s.StorageReservePercent < 0 || s.StorageReservePercent >= 100 || math.IsNaN(s.StorageReservePercent) {
		return fmt.Errorf("storage_reserve_percent must be at least 0 and below 100: %v", s.StorageReservePercent)
	}
	if s.StorageReserve < 0 && s.StorageReservePercent != 0 {
		return fmt.Errorf("storage_reserve is negative (no reserve) but storage_reserve_percent is set")
	}
	if s.UploadTTL < 0 {
		return fmt.Errorf("upload_ttl must not be negative: %s", time.Duration(s.UploadTTL))
	}
	if s.GCGrace < 0 {
		return fmt.Errorf("gc_grace must not be negative: %s", time.Duration(s.GCGrace))
	}
	if s.GCFullInterval < 0 {
		// Unlike gc_interval and scrub_interval it has no off: full
		// passes are the safety net of incremental ones. A negative
		// value was taken silently as the default.
		return fmt.Errorf("gc_full_interval must be at least %s (it cannot be turned off): %s", minPassInterval, time.Duration(s.GCFullInterval))
	}
	for _, iv := range []struct {
		name string
		d    caddy.Duration
	}{{"gc_interval", s.GCInterval}, {"gc_full_interval", s.GCFullInterval}, {"scrub_interval", s.ScrubInterval}} {
		if iv.d > 0 && time.Duration(iv.d) < minPassInterval {
			return fmt.Errorf("%s must be at least %s (or off): %s", iv.name, minPassInterval, time.Duration(iv.d))
		}
	}
	if s.ScrubRate != 0 && (s.ScrubRate < minScrubRate || s.ScrubRate > maxScrubRate) {
		return fmt.Errorf("scrub_rate must be between 1MiB and 1TiB per second: %d", s.ScrubRate)
	}
	return nil
}

// minPassInterval is the shortest gc_interval, gc_full_interval and
// scrub_interval: each starts a pass over the store (on replicas, a lease
// and queries of the shared metadata), and one every few nanoseconds
// (zot's intervals are often written as bare numbers) would run them
// back to back.
const minPassInterval = time.Second

// The bounds of scrub_rate: below 1 MiB/s a pass over a large store
// never ends; the top only catches a unit mistake.
const (
	minScrubRate = 1 << 20
	maxScrubRate = 1 << 40
)

// reserve is the free space blob bytes leave on the filesystem.
func (s StorageSettings) reserve() cache.SpaceReserve {
	switch {
	case s.StorageReserve < 0:
		return cache.SpaceReserve{}
	case s.StorageReserve == 0 && s.StorageReservePercent == 0:
		return cache.DefaultReserve
	}
	return cache.SpaceReserve{Bytes: s.StorageReserve, Percent: s.StorageReservePercent}
}

// options are the cache.Options of a store in the absolute folder dir
// (metaDir: absolute, or empty for the default).
func (s StorageSettings) options(dir, metaDir string, obs cache.SpaceObserver, logger *zap.Logger) cache.Options {
	opts := cache.Options{
		Dir:            dir,
		MetadataDir:    metaDir,
		Reserve:        s.reserve(),
		SpaceObserver:  obs,
		UploadTTL:      orDefault(time.Duration(s.UploadTTL), DefaultUploadTTL),
		GCGrace:        orDefault(time.Duration(s.GCGrace), DefaultGCGrace),
		GCInterval:     orDefault(time.Duration(s.GCInterval), DefaultGCInterval),
		GCFullInterval: orDefault(time.Duration(s.GCFullInterval), cache.DefaultGCFullInterval),
		ScrubInterval:  orDefault(time.Duration(s.ScrubInterval), DefaultScrubInterval),
		ScrubRate:      s.ScrubRate,
		Logger:         logger.Named("store").With(zap.String("storage", dir)),
	}
	if opts.GCInterval < 0 {
		opts.GCInterval = 0 // cache.Options: zero disables the loop
	}
	if opts.ScrubInterval < 0 {
		opts.ScrubInterval = 0
	}
	if obs != nil {
		collectors.once.Do(initCollectors)
		opts.ScrubObserver = scrubMetrics{storage: dir}
	}
	return opts
}

// folders returns the absolute storage and metadata folders (metadata:
// empty for the default).
func (s StorageSettings) folders() (dir, metaDir string, err error) {
	if dir, err = filepath.Abs(s.Storage); err != nil {
		return "", "", fmt.Errorf("storage %q: %w", s.Storage, err)
	}
	if s.MetadataDir != "" {
		if metaDir, err = filepath.Abs(s.MetadataDir); err != nil {
			return "", "", fmt.Errorf("metadata_dir %q: %w", s.MetadataDir, err)
		}
	}
	return filepath.Clean(dir), metaDir, nil
}

// checkFolders checks the folders without creating anything.
func checkFolders(dir, metaDir string) error {
	if err := cache.CheckMetadataDir(dir, metaDir); err != nil {
		return fmt.Errorf("metadata_dir: %w", err)
	}
	if fi, err := os.Stat(dir); err == nil && !fi.IsDir() {
		return fmt.Errorf("storage %s exists and is not a directory", dir)
	}
	return nil
}

// subStore is a provisioned sub_storage: its prefix and shared store.
type subStore struct {
	prefix  string
	dir     string // absolute: the key in stores
	metaDir string
	store   *sharedStore
}

// validateSubStorages checks the sub_storage entries without touching a
// folder; every error names the directive and the prefix.
func (rg *Registry) validateSubStorages() error {
	if len(rg.SubStorages) == 0 {
		return nil
	}
	if rg.StorageS3 != nil || rg.MetadataPostgres != "" {
		return fmt.Errorf("sub_storage is not supported with storage s3 or metadata postgres: the bucket and database hold every repository")
	}
	prefixes := make([]string, len(rg.SubStorages))
	for i, s := range rg.SubStorages {
		if s == nil {
			return fmt.Errorf("sub_storage %d is empty", i)
		}
		if s.Storage == "" {
			return fmt.Errorf("sub_storage %s: storage (its folder) is required", s.Prefix)
		}
		if err := s.validate(); err != nil {
			return fmt.Errorf("sub_storage %s: %w", s.Prefix, err)
		}
		prefixes[i] = s.Prefix
	}
	if err := substore.CheckPrefixes(prefixes); err != nil {
		return fmt.Errorf("sub_storage: %w", err)
	}
	return nil
}

// provisionSubStores takes a reference to the shared store of each
// sub_storage folder (without opening it).
func (rg *Registry) provisionSubStores() error {
	if err := rg.validateSubStorages(); err != nil {
		return err
	}
	top := rg.storageSettings()
	seen := map[string]string{rg.dir: "the main storage"}
	for _, s := range rg.SubStorages {
		set := s.under(top)
		dir, metaDir, err := set.folders()
		if err != nil {
			return fmt.Errorf("sub_storage %s: %w", s.Prefix, err)
		}
		if other, ok := seen[dir]; ok {
			return fmt.Errorf("sub_storage %s: storage %s is already %s; each sub-path needs a folder of its own", s.Prefix, dir, other)
		}
		seen[dir] = "sub_storage " + s.Prefix + "'s"
		opts := set.options(dir, metaDir, rg.metrics, rg.logger)
		st, err := acquireStore(opts)
		if err != nil {
			return fmt.Errorf("sub_storage %s: %w", s.Prefix, err)
		}
		st.hold(rg.ReadOnly)
		rg.subs = append(rg.subs, &subStore{prefix: s.Prefix, dir: dir, metaDir: metaDir, store: st})
		if diff := st.opts.differences(opts); len(diff) > 0 {
			rg.logger.Warn("storage already open with other settings ("+strings.Join(diff, ", ")+"); they apply after a restart",
				zap.String("storage", dir), zap.Strings("settings", diff))
		}
	}
	return nil
}

// releaseSubStores drops this config's references to the sub stores.
func (rg *Registry) releaseSubStores() error {
	var first error
	for _, s := range rg.subs {
		s.store.release(rg.ReadOnly)
		if err := dropStore(s.store); err != nil && first == nil {
			first = err
		}
	}
	rg.subs = nil
	return first
}

// localStore is a store of this handler's own folders: open, or
// pending (its filesystem was full at start; it opens with a later
// request).
type localStore struct {
	st      *cache.Store
	pending *pendingStore
}

// opened runs f with the store now if it is open, else once it opens.
// Only before the handler serves: pending's callback is not locked.
func (l localStore) opened(f func(*cache.Store)) {
	if l.st != nil {
		f(l.st)
		return
	}
	prev := l.pending.opened
	l.pending.opened = func(st *cache.Store) {
		if prev != nil {
			prev(st)
		}
		f(st)
	}
}

// routeSubStores opens the main store and the sub stores and returns the
// store that routes between them, with each local store to apply the
// mirror cache limit to. Without sub stores it is main itself, and an
// error opening it is the handler's. With them, a store whose
// filesystem is full or read-only at start is pending (pendingStore):
// the repositories it holds answer 503 (pushes 507 when full) until it
// opens, and those of every other store are served meanwhile.
func (rg *Registry) routeSubStores() (registry.Store, []localStore, error) {
	if len(rg.subs) == 0 {
		main, err := rg.store.open()
		if err != nil {
			return nil, nil, err
		}
		return main, []localStore{{st: main}}, nil
	}
	open := func(s *sharedStore, name string) (registry.Store, localStore, error) {
		st, err := s.open()
		if err == nil {
			return st, localStore{st: st}, nil
		}
		switch {
		case cache.IsStorageFull(err):
			rg.logger.Warn("storage full at start; its repositories get 503 (pushes 507) until space is freed, the others are served",
				zap.String("store", name), zap.String("storage", s.opts.Dir), zap.Error(err))
		case readOnlyStorage(err):
			rg.logger.Warn("storage read-only at start; its repositories get 503 until it is writable, the others are served",
				zap.String("store", name), zap.String("storage", s.opts.Dir), zap.Error(err))
		default:
			return nil, localStore{}, fmt.Errorf("%s: %w", name, err)
		}
		p := &pendingStore{shared: s, name: name}
		return p, localStore{pending: p}, nil
	}
	main, local, err := open(rg.store, "the main storage")
	if err != nil {
		return nil, nil, err
	}
	locals := []localStore{local}
	local.opened(rg.warnHidden)
	subs := make([]substore.Sub, 0, len(rg.subs))
	for _, s := range rg.subs {
		st, local, err := open(s.store, "sub_storage "+s.prefix)
		if err != nil {
			return nil, nil, err
		}
		locals = append(locals, local)
		subs = append(subs, substore.Sub{Prefix: s.prefix, Store: st})
	}
	router, err := substore.New(main, subs)
	if err != nil {
		return nil, nil, err
	}
	return router, locals, nil
}

// hiddenListed is how many hidden repositories the warning names.
const hiddenListed = 20

// warnHidden warns about repositories the main store holds under a
// sub-path's prefix: they were pushed before the sub-path existed, and
// are neither served nor listed now (moving them is the operator's
// choice: copy them with a client, or drop the sub-path). It reads only
// the names starting with each prefix, not the whole list: it runs as
// the store opens, before the first request is served.
func (rg *Registry) warnHidden(main *cache.Store) {
	for _, s := range rg.subs {
		hidden, count, err := hiddenUnder(context.Background(), main, s.prefix)
		if err != nil {
			rg.logger.Warn("listing the main storage for repositories a sub_storage hides", zap.Error(err))
			return
		}
		if count > 0 {
			rg.logger.Warn("the main storage holds repositories under a sub_storage prefix; they are hidden (neither served nor listed) while the sub_storage exists: copy them into it with a client, or remove the sub_storage",
				zap.String("prefix", s.prefix), zap.String("storage", s.dir),
				zap.Int("count", count), zap.Strings("repositories", hidden))
		}
	}
}

// repositoryLister is the part of a store hiddenUnder reads.
type repositoryLister interface {
	Repositories(ctx context.Context, last string, n int) ([]string, bool, error)
}

// hiddenUnder counts the repositories of st under prefix, and names the
// first hiddenListed of them. It reads the prefix itself, then the range
// of prefix+"/": names that only start with the prefix (team/ab,
// team/a-b for team/a), which sort between the two, are not read.
func hiddenUnder(ctx context.Context, st repositoryLister, prefix string) (names []string, count int, err error) {
	page, _, err := st.Repositories(ctx, registry.JustBefore(prefix), 1)
	if err != nil {
		return nil, 0, err
	}
	if len(page) > 0 && page[0] == prefix {
		names, count = append(names, prefix), 1
	}
	under := prefix + "/"
	last := registry.JustBefore(under)
	for size := 64; ; size = min(2*size, 1000) {
		page, more, err := st.Repositories(ctx, last, size)
		if err != nil {
			return nil, 0, err
		}
		for _, name := range page {
			if name < under {
				continue
			}
			if !strings.HasPrefix(name, under) {
				return names, count, nil // past the range
			}
			count++
			if len(names) < hiddenListed {
				names = append(names, name)
			}
		}
		if !more || len(page) == 0 {
			return names, count, nil
		}
		last = page[len(page)-1]
	}
}

// mirrorCacheTotal adds up the mirrored bytes of the stores of one
// handler (main and sub-paths) for the one mirror cache gauge, which
// each store's report would otherwise overwrite with its own figure.
type mirrorCacheTotal struct {
	obs   cache.MirrorCacheObserver
	mu    sync.Mutex
	sizes []int64 // by store
}

// mirrorCacheSlot is the observer of store i.
type mirrorCacheSlot struct {
	t *mirrorCacheTotal
	i int
}

// MirrorCacheSize records store i's size and reports the sum.
func (s mirrorCacheSlot) MirrorCacheSize(bytes int64) {
	s.t.mu.Lock()
	s.t.sizes[s.i] = bytes
	var sum int64
	for _, b := range s.t.sizes {
		sum += b
	}
	s.t.obs.MirrorCacheSize(sum)
	s.t.mu.Unlock()
}

// MirrorEvicted passes the evictions on: they add up by themselves.
func (s mirrorCacheSlot) MirrorEvicted(items int, bytes int64) { s.t.obs.MirrorEvicted(items, bytes) }
