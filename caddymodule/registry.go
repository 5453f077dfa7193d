// Package caddymodule wires the registry into Caddy: the oci_registry
// handler's JSON config and Caddyfile directive, its lifecycle, the stores
// shared across config reloads, and its Prometheus metrics. It decides
// nothing about the protocol; that is package registry.
package caddymodule

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3"
	"github.com/caddy-oci/caddy-oci/pgmeta"
	"github.com/caddy-oci/caddy-oci/registry"
	"github.com/caddy-oci/caddy-oci/registry/sigpolicy"
)

func init() {
	caddy.RegisterModule(Registry{})
}

// Defaults applied when a field is left out.
const (
	DefaultGCInterval = time.Hour
	// DefaultScrubInterval is how often the scrub reads every blob.
	DefaultScrubInterval = 7 * 24 * time.Hour
	DefaultUploadTTL     = 24 * time.Hour
	DefaultGCGrace       = time.Hour
)

// Registry serves the OCI distribution API (everything under /v2/) from a
// local, content-addressed store. Requests for other paths are passed on
// to the next handler, so a site can serve the registry next to anything
// else.
//
// The store is opened when Caddy starts running the config (or on the
// first request), never by `caddy validate`, so a config can be validated
// next to a running server that holds the store's lock.
type Registry struct {
	// Storage is the folder that holds blobs, metadata and upload sessions.
	// It is created if missing. A relative path is relative to Caddy's
	// working directory. Default: the "oci" folder in Caddy's data
	// directory (e.g. ~/.local/share/caddy/oci).
	//
	// Several handlers (or sites) may name the same folder: they then share
	// one store. Its upload_ttl, gc_interval, gc_grace and
	// gc_full_interval are those of the first handler that opened it;
	// changing them takes a restart. Its upload limits (max_uploads_*,
	// max_blob_size, max_upload_bytes, upload_idle_timeout) are those of
	// the handler built last, as after a reload.
	Storage string `json:"storage,omitempty"`

	// StorageShared says every replica mounts the Storage folder (NFS,
	// CephFS, ...), so replicas sharing MetadataPostgres may keep their
	// blobs in it (Caddyfile: `storage <dir> { shared }`). Required with
	// MetadataPostgres and a folder; only with MetadataPostgres.
	StorageShared bool `json:"storage_shared,omitempty"`

	// StorageS3 keeps blobs in an S3-compatible bucket instead of the
	// Storage folder (Caddyfile: `storage s3 { ... }`). With
	// MetadataPostgres, any number of replicas share it; without, one
	// node keeps the metadata in the embedded database in MetadataDir
	// (required then). Values may be placeholders such as
	// {env.S3_SECRET_KEY}.
	StorageS3 *S3Storage `json:"storage_s3,omitempty"`
	// MetadataPostgres is the PostgreSQL database (a postgres:// URL or
	// key=value DSN, e.g. {env.DATABASE_URL}) that holds everything but
	// blob bytes: repositories, tags, manifests, links, upload sessions,
	// API keys, sign-in sessions and the leases replicas coordinate by
	// (Caddyfile: `metadata postgres <dsn>`).
	MetadataPostgres string `json:"metadata_postgres,omitempty"`

	// StorageReserve is free space, in bytes, that new content leaves on
	// the storage's filesystem: pushed blobs and chunks, manifests and
	// mirror fills are refused with 507 Insufficient Storage while less
	// than the reserve would remain, and work again as soon as space is
	// freed. Metadata changes (tags, links, deletes) still work inside it.
	// The reserve is the metadata database's room: it writes through
	// memory-mapped files, and a full filesystem under them would crash
	// the process instead of failing a request. The reserve is the larger
	// of this and StorageReservePercent. A negative value disables it
	// (then only the filesystem's own "no space" answers 507). Default,
	// when neither is set: 256 MiB or 1%, whichever is larger.
	StorageReserve int64 `json:"storage_reserve,omitempty"`

	// StorageReservePercent is the reserve as a percentage of the
	// filesystem's size (see StorageReserve), from 0 to 100 exclusive.
	StorageReservePercent float64 `json:"storage_reserve_percent,omitempty"`

	// MetadataDir is where the metadata database lives. Default: the
	// "meta" folder in Storage; with StorageS3 (and no MetadataPostgres)
	// it has no default and is required. On another filesystem, nothing that fills
	// the storage's filesystem (blobs or other programs) can reach the
	// database's memory-mapped files. Moving it later means moving the
	// folder with it; a relative path is relative to Caddy's working
	// directory.
	MetadataDir string `json:"metadata_dir,omitempty"`

	// MaxManifestSize is the largest manifest, in bytes, accepted on push;
	// bigger ones are refused with 413. Default: 4 MiB.
	MaxManifestSize int64 `json:"max_manifest_size,omitempty"`

	// SparseManifests accepts a pushed image manifest whose config or
	// layers the repository does not hold (yet): partial copies, or blobs
	// pushed after their manifest. Off, such a push is refused with
	// MANIFEST_BLOB_UNKNOWN, which catches a client that lost a blob.
	// An index is accepted without its child manifests either way.
	SparseManifests bool `json:"sparse_manifests,omitempty"`

	// Auth is who may pull, push and delete (htpasswd, Docker token
	// service, access policies). Without it, everyone may do everything.
	Auth *Auth `json:"auth,omitempty"`

	// UploadTTL is the longest an upload session may live, from its
	// start, however busy: then it expires and its data is removed.
	// Sessions survive restarts until then. Default: 24h.
	UploadTTL caddy.Duration `json:"upload_ttl,omitempty"`

	// UploadIdleTimeout expires an upload session that has received no
	// chunk for this long, and removes its data; the client's next
	// request for it gets BLOB_UPLOAD_UNKNOWN. At most upload_ttl.
	// Default: 1h (or upload_ttl, if shorter); negative (Caddyfile: off): only upload_ttl applies.
	UploadIdleTimeout caddy.Duration `json:"upload_idle_timeout,omitempty"`

	// MaxUploadsPerClient is how many upload sessions one client may hold
	// open at once: a signed-in user across all its addresses, an
	// anonymous client per address (an IPv6 client per /64; behind a
	// proxy, configure Caddy's trusted_proxies). Past it, a new session
	// is refused with 429 TOOMANYREQUESTS until the client finishes,
	// cancels or abandons one. Default: 100; negative (Caddyfile: off): no
	// limit.
	MaxUploadsPerClient int `json:"max_uploads_per_client,omitempty"`

	// MaxUploadsPerRepository is how many upload sessions a repository
	// may have open at once, whoever opened them; past it, 429
	// TOOMANYREQUESTS. Default: 500; negative (Caddyfile: off): no limit.
	MaxUploadsPerRepository int `json:"max_uploads_per_repository,omitempty"`

	// MaxBlobSize is the largest blob that may be pushed, in bytes; a
	// larger one is refused with 413 SIZE_INVALID (before its bytes are
	// read when the client declares its size) and its session removed.
	// The Caddyfile takes sizes such as 10GiB. Default: no limit of its
	// own (max_upload_bytes bounds it); negative (Caddyfile: off): the same.
	MaxBlobSize int64 `json:"max_blob_size,omitempty"`

	// MaxUploadBytes is how many bytes all unfinished uploads together
	// may hold on disk (open sessions and blobs being written). A chunk
	// or session past it is refused with 429 TOOMANYREQUESTS, and the
	// client may retry once others finish. The Caddyfile takes sizes
	// such as 100GiB. Default: 64GiB; negative (Caddyfile: off): no limit.
	MaxUploadBytes int64 `json:"max_upload_bytes,omitempty"`

	// MaxUploadBytesPerClient is how many of those bytes the unfinished
	// uploads of one client (its user, else its address) may hold, so
	// that one client cannot take them all and block everyone's pushes.
	// Past it, that client's chunks and new sessions get 429
	// TOOMANYREQUESTS. The Caddyfile takes sizes such as 16GiB. Default:
	// a quarter of max_upload_bytes; negative (Caddyfile: off): no share.
	MaxUploadBytesPerClient int64 `json:"max_upload_bytes_per_client,omitempty"`

	// GCInterval is how often blobs that no repository links any more, and
	// expired upload sessions, are removed from disk. A negative value
	// disables the background collection. Default: 1h.
	GCInterval caddy.Duration `json:"gc_interval,omitempty"`

	// GCGrace protects young content from garbage collection: a blob
	// file younger than this is kept even when nothing links it yet, and
	// a repository's link to a blob that no manifest there references is
	// kept while it was made, or the blob asked for, within this time.
	// So a push whose manifest has not arrived yet never loses its layers.
	// Default: 1h.
	GCGrace caddy.Duration `json:"gc_grace,omitempty"`

	// GCFullInterval is how often a collection examines the whole storage
	// rather than only what changed since the last one (deleted manifests,
	// new or dropped links, new blobs): the safety net for anything that
	// was not recorded as changed, such as a storage written by a version
	// without that record. The first collection on such a storage is a
	// full one. Default: 24h.
	GCFullInterval caddy.Duration `json:"gc_full_interval,omitempty"`

	// ScrubInterval is how often every stored blob is read again and
	// hashed, to find bytes changed since they were written at the same
	// length (bit rot, a damaged restore), which nothing else notices: a
	// damaged blob of a mirror is dropped and fetched from upstream again
	// at the next pull; one a push stored is moved to quarantine/ in a
	// storage folder (its next push stores it again) and reported on S3.
	// Counted from the end of the last complete pass. A negative value
	// (Caddyfile: off) disables it. Default: 168h (a week).
	ScrubInterval caddy.Duration `json:"scrub_interval,omitempty"`

	// ScrubRate is the pace of a scrub pass in bytes per second, so that
	// pulls keep the disk or bucket. The Caddyfile takes sizes such as
	// 100MiB. Default: 48MiB.
	ScrubRate int64 `json:"scrub_rate,omitempty"`

	// Mirrors are upstream registries served read-only under their
	// prefixes (pull-through caches). Everything outside them is the
	// local, pushable registry.
	Mirrors []*Mirror `json:"mirrors,omitempty"`

	// MirrorCacheSize limits the bytes of mirrored content in the storage
	// (blobs and manifests that only mirrors hold). Past it, what was used
	// least recently is removed until 90% of the limit is left, and is
	// fetched again from upstream when next pulled. Pushed content is
	// never removed, even when a mirror holds the same digest, nor is a
	// blob being read or fetched. In bytes; the Caddyfile takes sizes
	// such as 500MiB or 50GB. Default: 0, no limit. With storage s3 and
	// metadata postgres the limit holds for all replicas together and
	// counts blobs (manifests are metadata there).
	MirrorCacheSize int64 `json:"mirror_cache_size,omitempty"`

	// LocalPrefixes are name prefixes that stay in the local registry even
	// when a mirror is the default namespace ("team" keeps team/app local).
	LocalPrefixes []string `json:"local_prefixes,omitempty"`

	// ReadOnly refuses every push and delete through the API (uploads,
	// mounts, manifest PUT, DELETE of manifests, tags, blobs and upload
	// sessions) with 403 DENIED "the registry is read-only", before
	// credentials are checked or a body is read. Pulls are unaffected,
	// and mirrors still fetch what they have not cached. While every
	// handler of a storage folder is read-only, its background garbage
	// collection is paused, so nothing is removed during a maintenance or
	// a copy of the folder; mirror_cache_size eviction goes on. Scaled
	// out, a replica whose handlers are all read-only never runs (or
	// leads) the cluster's collection. Changing it takes a config reload.
	ReadOnly bool `json:"read_only,omitempty"`

	// SyncInto copies repositories of upstream registries into local
	// prefixes on a schedule (see SyncInto).
	SyncInto []*SyncInto `json:"sync_into,omitempty"`

	// RequireSignature are signature policies: a manifest of a matching
	// repository is served only with a valid cosign or notation
	// signature (see SignaturePolicy).
	RequireSignature []*SignaturePolicy `json:"require_signature,omitempty"`
	sigPolicies      []*sigpolicy.Policy

	// SubStorages keep name prefixes in stores of their own, each with
	// its own folder and garbage collection (Caddyfile: `sub_storage
	// <prefix> { ... }`; see SubStorage). A prefix equal to a mirror's
	// puts that mirror's cache there; mirror_cache_size then applies to
	// each store on its own. Not with storage s3.
	SubStorages []*SubStorage `json:"sub_storages,omitempty"`

	mirrors []*registry.Mirror
	serves  *registry.Handler // routing only: which paths are ours
	plans   []syncPlan        // what to sync, once the config starts
	syncs   *syncRunner

	dir     string // absolute, cleaned Storage: the key in stores
	metaDir string // absolute MetadataDir, or empty
	store   *sharedStore
	subs    []*subStore    // the sub_storage stores, beside store
	cluster *sharedCluster // instead of store with StorageS3 or MetadataPostgres
	live    *liveHandler
	metrics *metricsObserver
	logger  *zap.Logger
	auth    *authRuntime // nil without Auth
	app     *App         // this config's oci app
	// requests counts the requests this config serves; the last one
	// after Cleanup releases the store (inflight.go).
	requests *requestGate
	// fdReserveChecked: the first request looked at its listener
	// (checkFDReserve). A pointer: a Registry is a config value, copied.
	fdReserveChecked *atomic.Bool
}

// liveHandler is the registry handler, built once the store is open.
type liveHandler struct {
	h  atomic.Pointer[registry.Handler]
	mu sync.Mutex // serialises building h
}

// CaddyModule returns the Caddy module information.
func (Registry) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.oci_registry",
		New: func() caddy.Module { return new(Registry) },
	}
}

// Provision sets defaults, takes a reference to the shared store of the
// storage folder (without opening it) and registers metrics.
func (rg *Registry) Provision(ctx caddy.Context) error {
	rg.logger = ctx.Logger()
	rg.fdReserveChecked = new(atomic.Bool)
	setDefaultGCPercent(rg.logger)
	releaseExePagesLater(rg.logger)
	rg.live = new(liveHandler)
	rg.requests = new(requestGate)
	var err error
	rg.metrics, err = newMetricsObserver(ctx.GetMetricsRegistry())
	if err != nil {
		return err
	}
	records := func() (authRecords, error) { return rg.store.open() }
	var clock func() time.Time // nil: this process's
	if rg.scaledOut() {
		if err := rg.validateSubStorages(); err != nil {
			return err
		}
		if err := rg.provisionCluster(); err != nil {
			return err
		}
		records, clock = rg.cluster.records, rg.cluster.now
	} else if err := rg.provisionStore(); err != nil {
		return err
	} else if err := rg.provisionSubStores(); err != nil {
		return err
	}

	// The oci app opens the store and builds the handler (which applies
	// the mirror cache limit) when Caddy starts running this config;
	// `caddy validate` provisions but never starts apps.
	app, err := ctx.App(appID)
	if err != nil {
		return err
	}
	rg.app = app.(*App)
	rg.syncs = new(syncRunner)
	rg.app.onStart(func() error {
		h, err := rg.registryHandler()
		if err != nil && rg.cluster != nil && rg.cluster.metaDir == "" {
			// PostgreSQL or the bucket down must not keep the server from
			// starting: requests get 503 until they are back. (Scheduled
			// syncs start with the next config load.)
			rg.logger.Warn("storage not reachable at start; requests get 503 until it is",
				zap.String("storage", rg.dir), zap.Error(err))
			return nil
		}
		if err != nil && cache.IsStorageFull(err) {
			// Nor must a disk another program filled while the process
			// was down: the store opens with the first request after
			// space is freed, without a restart.
			rg.logger.Warn("storage full at start; requests get 503 (pushes 507) until space is freed",
				zap.String("storage", rg.dir), zap.Error(err))
			return nil
		}
		if err != nil && readOnlyStorage(err) {
			// Nor a filesystem the kernel made read-only after disk
			// errors (the database cannot open there): the store opens
			// with the first request after it is writable again.
			rg.logger.Warn("storage read-only at start; requests get 503 until it is writable",
				zap.String("storage", rg.dir), zap.Error(err))
			return nil
		}
		if err != nil {
			return err
		}
		return rg.syncs.start(h, rg.plans, rg)
	})

	if rg.sigPolicies, err = buildSignaturePolicies(rg.RequireSignature); err != nil {
		return err
	}
	rg.mirrors, err = buildMirrors(rg.Mirrors, rg.LocalPrefixes, rg.MirrorCacheSize, caddy.NewReplacer(), rg.logger)
	if err != nil {
		return err
	}
	// Routing needs the namespaces before the store is open.
	routing, err := buildMirrors(rg.Mirrors, rg.LocalPrefixes, rg.MirrorCacheSize, caddy.NewReplacer(), zap.NewNop())
	if err != nil {
		return err
	}
	rg.serves, err = registry.NewHandler(registry.Config{Mirrors: routing, LocalPrefixes: rg.LocalPrefixes})
	if err != nil {
		return err
	}
	for i, m := range rg.Mirrors {
		if m.Sync != nil {
			rg.plans = append(rg.plans, syncPlan{src: rg.mirrors[i], cfg: m.Sync})
		}
	}
	copies, err := buildCopySources(rg.SyncInto, rg.serves.Names(), caddy.NewReplacer(), rg.logger)
	if err != nil {
		return err
	}
	rg.plans = append(rg.plans, copies...)
	if rg.Auth != nil {
		rg.Auth.audit = ctx.Logger(auditLog{})
		rg.Auth.clock = clock
		if rg.auth, err = rg.Auth.provision(rg.serves.Names(), records, rg.logger); err != nil {
			return fmt.Errorf("auth: %w", err)
		}
	}
	return nil
}

// provisionCluster takes a reference to the scaled-out store of the
// bucket and database (opened on first use).
func (rg *Registry) provisionCluster() error {
	if err := rg.validateScaleOut(); err != nil {
		return err
	}
	s3cfg, dsn, err := rg.expandScaleOut()
	if err != nil {
		return err
	}
	// Settings are checked here, without contacting anything: a mistake
	// is a config error, not a 503 at every request.
	if err := pgmeta.CheckDSN(dsn); dsn != "" && err != nil {
		return fmt.Errorf("metadata postgres: %w", err)
	}
	gcEvery := orDefault(time.Duration(rg.GCInterval), DefaultGCInterval)
	c := &sharedCluster{
		s3: s3cfg, dsn: dsn,
		ttl:        orDefault(time.Duration(rg.UploadTTL), DefaultUploadTTL),
		grace:      orDefault(time.Duration(rg.GCGrace), DefaultGCGrace),
		gcEvery:    max(gcEvery, 0),
		scrubEvery: max(orDefault(time.Duration(rg.ScrubInterval), DefaultScrubInterval), 0),
		scrubRate:  rg.ScrubRate,
	}
	if rg.StorageS3 != nil {
		c.reads = *rg.StorageS3
		c.reads.Config = s3.Config{} // c.s3 has it, expanded
	} else if c.folder, err = filepath.Abs(rg.Storage); err != nil {
		return fmt.Errorf("storage %q: %w", rg.Storage, err)
	}
	if rg.MetadataPostgres == "" {
		if c.metaDir, err = filepath.Abs(rg.MetadataDir); err != nil {
			return fmt.Errorf("metadata_dir %q: %w", rg.MetadataDir, err)
		}
	}
	c.logger = rg.logger.Named("store").With(zap.String("storage", clusterKey(c)))
	rg.cluster, rg.dir, err = acquireCluster(c)
	if err != nil {
		return err
	}
	rg.cluster.hold(rg.ReadOnly)
	if diff := rg.cluster.differences(c); len(diff) > 0 {
		// The embedded database's folder, open with the settings of an
		// earlier config (clusterKey).
		rg.logger.Warn("storage already open with other settings ("+strings.Join(diff, ", ")+"); they apply after a restart",
			zap.String("storage", rg.dir), zap.Strings("settings", diff))
	}
	return nil
}

// provisionStore takes a reference to the shared store of the storage
// folder (without opening it).
func (rg *Registry) provisionStore() error {
	set := rg.storageSettings()
	if set.Storage == "" {
		set.Storage = filepath.Join(caddy.AppDataDir(), "oci")
	}
	var err error
	if rg.dir, rg.metaDir, err = set.folders(); err != nil {
		return err
	}
	opts := set.options(rg.dir, rg.metaDir, rg.metrics, rg.logger)
	rg.store, err = acquireStore(opts)
	if err != nil {
		return err
	}
	rg.store.hold(rg.ReadOnly)
	if diff := rg.store.opts.differences(opts); len(diff) > 0 {
		rg.logger.Warn("storage already open with other settings ("+strings.Join(diff, ", ")+"); they apply after a restart",
			zap.String("storage", rg.dir), zap.Strings("settings", diff))
	}
	return nil
}

// Validate checks the config without touching the store.
func (rg *Registry) Validate() error {
	if err := rg.validateScaleOut(); err != nil {
		return err
	}
	if rg.MaxManifestSize < 0 {
		return fmt.Errorf("max_manifest_size must not be negative: %d", rg.MaxManifestSize)
	}
	if rg.MirrorCacheSize < 0 {
		return fmt.Errorf("mirror_cache_size must not be negative: %d", rg.MirrorCacheSize)
	}
	if err := rg.storageSettings().validate(); err != nil {
		return err
	}
	if err := rg.validateSubStorages(); err != nil {
		return err
	}
	if err := rg.validateUploadLimits(); err != nil {
		return err
	}
	if rg.Auth != nil {
		if err := rg.Auth.validate(); err != nil {
			return fmt.Errorf("auth: %w", err)
		}
	}
	if rg.scaledOut() {
		// The embedded metadata's folder, or the shared one; nothing else
		// of ours is on this machine.
		if rg.MetadataPostgres == "" {
			if fi, err := os.Stat(rg.MetadataDir); err == nil && !fi.IsDir() {
				return fmt.Errorf("metadata_dir %s exists and is not a directory", rg.MetadataDir)
			}
			return nil
		}
		return checkFolders(rg.Storage, "")
	}
	if err := checkFolders(rg.dir, rg.metaDir); err != nil {
		return err
	}
	for _, s := range rg.subs {
		if err := checkFolders(s.dir, s.metaDir); err != nil {
			return fmt.Errorf("sub_storage %s: %w", s.prefix, err)
		}
	}
	return nil
}

// Cleanup drops this config's reference to the store (the last reference
// closes it) once the requests this config accepted have ended, or at once
// when the process exits (inflight.go).
func (rg *Registry) Cleanup() error {
	if rg.syncs != nil {
		rg.syncs.stop() // a newer config runs its own
	}
	if h := rg.live.h.Load(); h != nil {
		// Mirrored manifests answered before they were stored: stored
		// before the store may close (bounded; a cache entry lost is
		// fetched again). Requests still running store before they
		// answer from here on.
		ctx, cancel := context.WithTimeout(context.Background(), registry.DrainTimeout)
		_ = h.Drain(ctx)
		cancel()
	}
	var relErr error
	release := func() {
		defer pendingReleases.Add(-1)
		if err := rg.release(); err != nil {
			relErr = err
			rg.logger.Error("releasing the storage of a replaced config", zap.String("storage", rg.dir), zap.Error(err))
		}
	}
	if caddy.Exiting() {
		// The process ends: Caddy gave its requests the grace period.
		rg.requests.close(func() {})
		return rg.release()
	}
	pendingReleases.Add(1) // until release has run
	if rg.requests.close(release) {
		return relErr
	}
	return nil
}

// storeClosed reports, for a config already released, whether its store
// is closed (or was never opened: it must not be opened now, behind the
// back of the config that holds the folder).
func (rg *Registry) storeClosed() bool {
	if rg.cluster != nil {
		return rg.cluster.isClosed()
	}
	return rg.store != nil && rg.store.opened() == nil
}

// release gives back what this config's requests used: auth and its
// reference to the store.
func (rg *Registry) release() error {
	rg.auth.close()
	if rg.cluster != nil {
		rg.cluster.release(rg.ReadOnly)
		if rg.cluster.metaDir != "" { // the embedded database's close
			life := storeLife(rg.cluster.metaDir)
			life.Lock()
			defer life.Unlock()
		}
		_, err := clusters.Delete(rg.dir)
		return err
	}
	if rg.store == nil {
		return nil
	}
	subErr := rg.releaseSubStores()
	rg.store.release(rg.ReadOnly)
	if err := dropStore(rg.store); err != nil {
		return err
	}
	return subErr
}

// ServeHTTP serves /v2/ (and /_oci/ with the token proxy, sign-in or sync:
// paths there that are not exactly ours get 404) and passes every other
// request to next, without the sign-in cookies and never with an API
// key: the next handler may be another service (reverse_proxy), and a
// session or key is this server's alone. While a newer config takes over, HTTP/1 responses close their
// connection (reload.go).
func (rg *Registry) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if rg.requests.enter() && rg.storeClosed() {
		rg.requests.leave()
		serveCleanedUp(w, r)
		return nil
	}
	warnClientAddress(r, rg.logger)
	pass := rg.serve(w, r)
	rg.requests.leave()
	if pass != nil {
		// The next handler (reverse_proxy) calls a body the client
		// spoiled a bad gateway; it is the client's mistake (front.go).
		body := watchBody(r)
		return body.blame(next.ServeHTTP(pass, r))
	}
	return nil
}

// serve is ServeHTTP while the request counts as this config's; it returns
// the writer to pass the request on to the next handler with, or nil when
// it answered.
func (rg *Registry) serve(w http.ResponseWriter, r *http.Request) http.ResponseWriter {
	w = rg.app.closeWhenReplaced(w, r)
	rg.checkFDReserve(r)
	if rg.auth.serve(w, r) {
		return nil
	}
	if len(rg.plans) > 0 && r.URL.Path == SyncPath {
		rg.serveSync(w, r)
		return nil
	}
	if r.URL.Path == v1Ping {
		serveNoV1(w, r)
		return nil
	}
	ownsSync := len(rg.plans) > 0 && registry.MayReachOwn(r.URL.Path)
	if !rg.serves.Serves(r.URL.Path) && !rg.auth.ownsPath(r.URL.Path) && !ownsSync {
		if r = rg.auth.guard(w, r); r == nil {
			return nil
		}
		authscope.DropSignInCookies(r.Header)
		if rg.auth.holdsAPIKey(r) {
			w, _, finish := authscope.GuardUnreadBody(w, r)
			http.Error(w, "API keys are accepted by the registry's API only", http.StatusUnauthorized)
			finish()
			return nil
		}
		return &ownCookiesWriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w}}
	}
	h, err := rg.registryHandler()
	if err != nil {
		if cache.IsStorageFull(err) || readOnlyStorage(err) {
			// The operator's to fix, but no fault, as a full disk under
			// an open store is logged.
			rg.logger.Warn("storage full or read-only", zap.String("storage", rg.dir), zap.Error(err))
		} else {
			rg.logger.Error("storage unavailable", zap.String("storage", rg.dir), zap.Error(err))
		}
		// The spec's envelope, as the handler would answer: clients show
		// the message and retry.
		w, r, finish := authscope.GuardUnreadBody(w, r)
		defer finish()
		if cache.IsStorageFull(err) && writes(r.Method) {
			// As a store that is open answers new content on a full disk.
			registry.NewError(http.StatusInsufficientStorage, registry.CodeStorageFull,
				"storage is full", err).Render(w, r)
			return nil
		}
		w.Header().Set("Retry-After", "5")
		msg := "storage is temporarily unavailable, retry"
		if cache.IsStorageFull(err) {
			msg = "storage is full: its metadata cannot be read until space is freed, retry"
		} else if readOnlyStorage(err) {
			msg = "storage is read-only: its metadata cannot be opened until it is writable, retry"
		}
		registry.NewError(http.StatusServiceUnavailable, registry.CodeUnavailable, msg, err).Render(w, r)
		return nil
	}
	h.ServeHTTP(w, r)
	return nil
}

// writes reports whether a request of this method would change the store.
func writes(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return false
	}
	return true
}

// v1Ping is the Docker V1 registry API's ping. Clients ask it only after
// GET /v2/ failed, to tell an old V1 registry from a failed connection.
const v1Ping = "/v1/_ping"

// serveNoV1 says that this registry speaks no V1, as distribution and zot
// do with a 404. Left to the rest of the site, the ping would reach
// Caddy's empty 200 and the client would take the registry for a V1 one:
// skopeo and podman then fail with "can't talk to a V1 container
// registry", an error they never retry, where the real cause (a /v2/
// request reset, e.g. by the kernel when a reload closes the old
// listener) is one their retries handle.
func serveNoV1(w http.ResponseWriter, r *http.Request) {
	w, r, finish := authscope.GuardUnreadBody(w, r)
	defer finish()
	registry.NewError(http.StatusNotFound, registry.CodeUnsupported,
		"this registry serves the OCI distribution API under /v2/ only; the Docker V1 API is not supported", nil).Render(w, r)
}

// registryHandler returns the registry handler, opening the store on first
// use if the oci app has not done so yet (apps start in no fixed order, so
// the HTTP server may take a request first).
func (rg *Registry) registryHandler() (*registry.Handler, error) {
	if h := rg.live.h.Load(); h != nil {
		return h, nil
	}
	rg.live.mu.Lock()
	defer rg.live.mu.Unlock()
	if h := rg.live.h.Load(); h != nil {
		return h, nil
	}
	var st registry.Store
	var locals []localStore // the mirror cache limit applies to them only
	if rg.cluster != nil {
		cs, _, err := rg.cluster.open()
		if err != nil {
			return nil, err
		}
		st = cs
	} else {
		var err error
		if st, locals, err = rg.routeSubStores(); err != nil {
			return nil, err
		}
	}
	h, err := registry.NewHandler(registry.Config{
		Store:           st,
		MaxManifestSize: rg.MaxManifestSize,
		SparseManifests: rg.SparseManifests,
		Logger:          rg.logger,
		Observer:        rg.metrics,
		Mirrors:         rg.mirrors,
		LocalPrefixes:   rg.LocalPrefixes,
		Authorizer:      rg.auth.registryAuthorizer(),
		CanRead:         rg.auth.canRead(),
		CanPush:         rg.auth.canPush(),
		Uploads:         rg.uploadLimits(),
		ClientIP:        clientIP,
		ReadOnly:        rg.ReadOnly,

		SignaturePolicies: rg.sigPolicies,
	})
	if err != nil {
		return nil, err
	}
	total := &mirrorCacheTotal{obs: rg.metrics, sizes: make([]int64, len(locals))}
	for i, local := range locals {
		local.opened(func(st *cache.Store) { rg.setMirrorCache(st, h, mirrorCacheSlot{total, i}) })
	}
	if cs, ok := st.(interface{ SetMirrorCache(cache.MirrorCache) }); ok && rg.cluster != nil {
		rg.setMirrorCache(cs, h, rg.metrics) // counted for every replica
	}
	rg.live.h.Store(h)
	return h, nil
}

// uploadLimits are the upload limits as registry.Config takes them: zero
// takes the default, negative lifts the limit.
func (rg *Registry) uploadLimits() cache.UploadLimits {
	return cache.UploadLimits{
		PerOwner:    rg.MaxUploadsPerClient,
		PerRepo:     rg.MaxUploadsPerRepository,
		MaxBlobSize: rg.MaxBlobSize,
		TotalBytes:  rg.MaxUploadBytes,
		IdleTimeout: time.Duration(rg.UploadIdleTimeout),

		PerOwnerBytes: rg.MaxUploadBytesPerClient,
	}
}

// validateUploadLimits refuses an idle timeout longer than the life of
// a session, which could never apply.
func (rg *Registry) validateUploadLimits() error {
	idle, ttl := time.Duration(rg.UploadIdleTimeout), orDefault(time.Duration(rg.UploadTTL), DefaultUploadTTL)
	if idle > ttl { // the default idle timeout may be longer: moot then
		return fmt.Errorf("upload_idle_timeout %s is longer than upload_ttl %s", idle, ttl)
	}
	return nil
}

// clientIP is the client address Caddy determined (honouring
// trusted_proxies), for the limit of uploads per anonymous client.
func clientIP(r *http.Request) string {
	if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && ip != "" {
		return ip
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// Interface guards
var (
	_ caddy.Module                = (*Registry)(nil)
	_ caddy.Provisioner           = (*Registry)(nil)
	_ caddy.Validator             = (*Registry)(nil)
	_ caddy.CleanerUpper          = (*Registry)(nil)
	_ caddyhttp.MiddlewareHandler = (*Registry)(nil)
	_ caddyfile.Unmarshaler       = (*Registry)(nil)
	_ registry.Observer           = (*metricsObserver)(nil)
	_ registry.MirrorObserver     = (*metricsObserver)(nil)
	_ cache.SpaceObserver         = (*metricsObserver)(nil)
)
