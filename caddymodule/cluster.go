package caddymodule

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/fs"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3"
	"github.com/caddy-oci/caddy-oci/cache/composite"
	"github.com/caddy-oci/caddy-oci/cache/coord"
	"github.com/caddy-oci/caddy-oci/cache/metastore"
	"github.com/caddy-oci/caddy-oci/cache/metastore/badgermeta"
	"github.com/caddy-oci/caddy-oci/pgmeta"
)

// clusters holds one *sharedCluster per bucket (or shared folder) and
// database (or metadata_dir), for
// the same reasons stores are shared (store.go): a reload provisions the
// new config while the old one serves, and both use one pool of
// connections and one GC loop.
var clusters = caddy.NewUsagePool()

// sharedCluster is the scaled-out store, opened on first use: nothing is
// contacted during Provision (`caddy validate`, or PostgreSQL down at
// start, must not fail the config).
type sharedCluster struct {
	// Blobs are in the bucket s3, or in folder when it is set (a folder
	// every replica mounts: `storage <dir> { shared }`).
	s3     s3.Config
	folder string
	// Metadata is in PostgreSQL at dsn, or in the embedded database in
	// metaDir when it is set: one node, S3 with `metadata_dir`.
	dsn        string
	metaDir    string
	ttl, grace time.Duration
	gcEvery    time.Duration
	// scrubEvery (0: never) and scrubRate: the scrub's passes.
	scrubEvery time.Duration
	scrubRate  int64
	logger     *zap.Logger
	// localClock is this replica's wall clock; nil is time.Now. Tests
	// step it.
	localClock func() time.Time

	reads S3Storage // redirect and cache; its Config is s3's
	// The bucket (checked at provision, connects on first use), maybe
	// redirecting or behind a read cache; made only by the config that
	// makes the cluster, so a reload does not scan the cache folder again.
	blobs blobstore.Store

	mu         sync.Mutex
	connecting bool // an open is under way: others answer 503 at once
	closed     bool
	failedAt   time.Time // of the last failed open, whose error failed is
	failed     error
	meta       clusterMeta
	closeMeta  func()
	st         *composite.Store
	stopGC     context.CancelFunc
	gcDone     chan struct{}
	// readOnly and writable count the handlers using the cluster, by
	// their read_only: this replica's GC pauses while all are read-only,
	// as a storage folder's does (store.go).
	readOnly, writable int
}

// hold counts one more handler using the cluster; each call must be
// matched by one release with the same readOnly.
func (c *sharedCluster) hold(readOnly bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if readOnly {
		c.readOnly++
	} else {
		c.writable++
	}
	c.pauseGC()
}

// release counts one handler fewer (its config was cleaned up).
func (c *sharedCluster) release(readOnly bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if readOnly {
		c.readOnly--
	} else {
		c.writable--
	}
	c.pauseGC()
}

// pauseGC pauses this replica's GC while every handler using the cluster
// is read-only: it then never takes the GC lease, so a read-only replica
// deletes nothing and never leads a pass (composite/gcpause.go). Called
// with mu held.
func (c *sharedCluster) pauseGC() {
	if c.st != nil {
		c.st.PauseGC(c.readOnly > 0 && c.writable == 0)
	}
}

// clusterMeta is the metadata a cluster runs on, PostgreSQL or the
// embedded database; both keep the auth layer's records too.
type clusterMeta interface {
	metastore.Store
	authRecords
}

// keySalt keys the hash that names clusters: the name reaches logs (the
// "storage" field), and an unsalted hash of a DSN whose other parts are
// known would let anyone who reads them guess a password offline.
var keySalt = func() []byte {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return b
}()

// clusterKey names a cluster by every setting it runs with, so a reload
// that changes any (a rotated key, another grace period) gets a cluster of
// its own rather than the old one's settings; the secrets only as a salted
// hash. The embedded database is the exception: badger opens its folder
// once per process, so the cluster is named by the folder alone and keeps
// the settings it was made with until a restart (as a storage folder's
// store does; provisionCluster warns).
func clusterKey(c *sharedCluster) string {
	if c.metaDir != "" {
		return "metadata_dir " + c.metaDir
	}
	return c.where() + " (" + c.settingsHash() + ")"
}

// where is the blobs' place, for logs.
func (c *sharedCluster) where() string {
	if c.folder != "" {
		return c.folder
	}
	return fmt.Sprintf("s3://%s/%s", c.s3.Bucket, c.s3.Prefix)
}

// settingsHash is a salted hash of every setting the cluster runs with.
func (c *sharedCluster) settingsHash() string {
	m := hmac.New(sha256.New, keySalt)
	settings, _ := json.Marshal(struct {
		S3                 s3.Config
		Reads              S3Storage
		Folder, DSN, Meta  string
		TTL, Grace, GCEvry time.Duration
	}{c.s3, c.reads, c.folder, c.dsn, c.metaDir, c.ttl, c.grace, c.gcEvery})
	m.Write(settings)
	return hex.EncodeToString(m.Sum(nil)[:8])
}

// differences names the settings o asks for that differ from those c
// runs with, by their config names, values only where they hold no
// secret. Empty: the same behaviour.
func (c *sharedCluster) differences(o *sharedCluster) []string {
	var diff []string
	add := func(name string, was, is any, show bool) {
		switch {
		case was == is:
		case show:
			diff = append(diff, fmt.Sprintf("%s: %v -> %v", name, was, is))
		default:
			diff = append(diff, name)
		}
	}
	add("storage s3", c.s3, o.s3, false)
	add("storage s3 redirect", c.reads.Redirect, o.reads.Redirect, true)
	add("storage s3 redirect expiry", time.Duration(c.reads.RedirectExpiry), time.Duration(o.reads.RedirectExpiry), true)
	add("storage s3 cache", c.reads.CacheDir, o.reads.CacheDir, true)
	add("storage s3 cache size", c.reads.CacheSize, o.reads.CacheSize, true)
	add("upload_ttl", c.ttl, o.ttl, true)
	add("gc_grace", c.grace, o.grace, true)
	add("gc_interval", c.gcEvery, o.gcEvery, true)
	add("scrub_interval", c.scrubEvery, o.scrubEvery, true)
	add("scrub_rate", c.scrubRate, o.scrubRate, true)
	return diff
}

func acquireCluster(c *sharedCluster) (*sharedCluster, string, error) {
	key := clusterKey(c)
	v, _, err := clusters.LoadOrNew(key, func() (caddy.Destructor, error) {
		if c.folder != "" {
			return c, nil // made by connect: provisioning writes no folder
		}
		var err error
		c.blobs, err = c.reads.blobStore(c.s3, c.logger)
		if err != nil {
			return nil, err
		}
		return c, nil
	})
	if err != nil {
		return nil, "", err
	}
	return v.(*sharedCluster), key, nil
}

// open connects to the bucket and the database unless it did already. A
// failed open is not remembered: the next request tries again, so the
// registry recovers by itself once PostgreSQL is up.
func (c *sharedCluster) open() (*composite.Store, clusterMeta, error) {
	c.mu.Lock()
	switch {
	case c.st != nil:
		defer c.mu.Unlock()
		return c.st, c.meta, nil
	case c.closed:
		c.mu.Unlock()
		return nil, nil, errors.New("storage closed: its config was replaced")
	case c.connecting:
		// A database that does not answer holds a connect for seconds;
		// the requests meanwhile answer at once instead of queueing.
		c.mu.Unlock()
		return nil, nil, fmt.Errorf("%w: connecting", cache.ErrUnavailable)
	case c.failed != nil && time.Since(c.failedAt) < retryOpen:
		// While the database is down, one attempt per retryOpen answers
		// every request.
		defer c.mu.Unlock()
		return nil, nil, c.failed
	}
	c.connecting = true
	c.mu.Unlock()
	st, meta, closeMeta, err := c.connect()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.connecting = false
	if err == nil && c.closed {
		st.Close()
		closeMeta()
		return nil, nil, errors.New("storage closed: its config was replaced")
	}
	if err != nil {
		c.failed, c.failedAt = fmt.Errorf("%w: %w", cache.ErrUnavailable, err), time.Now()
		c.logger.Warn("storage unavailable", zap.Error(err))
		return nil, nil, c.failed
	}
	c.failed = nil
	c.st, c.meta, c.closeMeta = st, meta, closeMeta
	c.pauseGC()
	c.startGC(st)
	return st, meta, nil
}

// retryOpen is how long a failed open answers for itself.
const retryOpen = 2 * time.Second

// connect opens the metadata (migrating PostgreSQL's); mu is not held.
// closeMeta closes it.
func (c *sharedCluster) connect() (st *composite.Store, meta clusterMeta, closeMeta func(), err error) {
	if c.blobs == nil { // a shared folder; one connect runs at a time
		if c.blobs, err = fs.New(fs.Options{Dir: c.folder, Logger: c.logger.Named("fs")}); err != nil {
			return nil, nil, nil, fmt.Errorf("storage %s: %w", c.folder, err)
		}
	}
	var leases coord.Leases
	if c.metaDir != "" {
		// One node: the embedded database, and coordination in this
		// process. Badger locks the folder: a second process on it fails
		// here.
		life := storeLife(c.metaDir) // after the close of a replaced config's (store.go)
		life.Lock()
		db, err := badgermeta.Open(c.metaDir)
		life.Unlock()
		if err != nil {
			return nil, nil, nil, fmt.Errorf("metadata_dir %s: %w", c.metaDir, err)
		}
		meta, leases = db, coord.NewLocal()
		closeMeta = func() {
			if err := closeWithin(db.Close); err != nil {
				c.logger.Error("closing metadata", zap.String("metadata_dir", c.metaDir), zap.Error(err))
			}
		}
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		db, err := pgmeta.Open(ctx, pgmeta.Options{DSN: c.dsn})
		if err != nil {
			return nil, nil, nil, err
		}
		meta, leases, closeMeta = db, db.Leases(), db.Close
	}
	st, err = composite.New(composite.Options{
		Blobs: c.blobs, Meta: meta, Leases: leases,
		UploadTTL: c.ttl, GCGrace: c.grace, Logger: c.logger, LocalClock: c.localClock,
	})
	if err != nil {
		closeMeta()
		return nil, nil, nil, err
	}
	return st, meta, closeMeta, nil
}

// startGC runs GC every gcEvery and the scrub every scrubEvery until
// Destruct; mu is held.
func (c *sharedCluster) startGC(st *composite.Store) {
	if c.gcEvery <= 0 && c.scrubEvery <= 0 {
		return
	}
	gctx, stop := context.WithCancel(context.Background())
	c.stopGC, c.gcDone = stop, make(chan struct{})
	var wg sync.WaitGroup
	if c.gcEvery > 0 {
		wg.Go(func() { st.RunGC(gctx, c.gcEvery) })
	}
	if c.scrubEvery > 0 {
		collectors.once.Do(initCollectors)
		wg.Go(func() { st.RunScrub(gctx, c.scrubEvery, c.scrubRate, scrubMetrics{storage: c.where()}) })
	}
	go func() {
		defer close(c.gcDone)
		wg.Wait()
	}()
}

// records opens the cluster for the auth layer's records.
func (c *sharedCluster) records() (authRecords, error) {
	_, meta, err := c.open()
	if err != nil {
		return nil, err
	}
	// As they are: a wrapper would hide what else they are (the login
	// ledger the replicas share, loginledger.go).
	return meta, nil
}

// now is the cluster's clock, the store's: the database's with
// PostgreSQL, so that a sign-in started on one replica ends on whichever
// the callback reaches, and keys and sessions written by one are judged
// alike by all. This process's clock while the cluster cannot open.
func (c *sharedCluster) now() time.Time {
	st, _, err := c.open()
	if err != nil {
		return time.Now()
	}
	return st.Now()
}

// isClosed reports whether Destruct has run.
func (c *sharedCluster) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// Destruct stops GC and closes the database pool.
func (c *sharedCluster) Destruct() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if c.stopGC != nil {
		c.stopGC()
		<-c.gcDone
		c.stopGC = nil
	}
	if c.st != nil {
		c.st.Close() // its fills
	}
	if c.closeMeta != nil {
		c.closeMeta()
	}
	c.st, c.meta, c.closeMeta = nil, nil, nil
	return nil
}

var _ caddy.Destructor = (*sharedCluster)(nil)
