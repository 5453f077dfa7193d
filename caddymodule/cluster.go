package caddymodule

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3"
	"github.com/caddy-oci/caddy-oci/cache/composite"
	"github.com/caddy-oci/caddy-oci/pgmeta"
)

// clusters holds one *sharedCluster per bucket, prefix and database, for
// the same reasons stores are shared (store.go): a reload provisions the
// new config while the old one serves, and both use one pool of
// connections and one GC loop.
var clusters = caddy.NewUsagePool()

// sharedCluster is the scaled-out store, opened on first use: nothing is
// contacted during Provision (`caddy validate`, or PostgreSQL down at
// start, must not fail the config).
type sharedCluster struct {
	s3         s3.Config
	dsn        string
	ttl, grace time.Duration
	gcEvery    time.Duration
	logger     *zap.Logger

	mu       sync.Mutex
	failedAt time.Time // of the last failed open, whose error failed is
	failed   error
	meta     *pgmeta.Store
	st       *composite.Store
	stopGC   context.CancelFunc
	gcDone   chan struct{}
}

// clusterKey names a cluster without holding its secrets: the DSN's
// password must not sit in a map key that may reach a log.
func clusterKey(c s3.Config, dsn string) string {
	h := sha256.Sum256([]byte(dsn))
	return fmt.Sprintf("s3://%s/%s@%s pg:%s", c.Bucket, c.Prefix, c.Endpoint, hex.EncodeToString(h[:8]))
}

func acquireCluster(c *sharedCluster) (*sharedCluster, string, error) {
	key := clusterKey(c.s3, c.dsn)
	v, _, err := clusters.LoadOrNew(key, func() (caddy.Destructor, error) { return c, nil })
	if err != nil {
		return nil, "", err
	}
	return v.(*sharedCluster), key, nil
}

// open connects to the bucket and the database unless it did already. A
// failed open is not remembered: the next request tries again, so the
// registry recovers by itself once PostgreSQL is up.
func (c *sharedCluster) open() (*composite.Store, *pgmeta.Store, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.st != nil {
		return c.st, c.meta, nil
	}
	// While the database is down, every request would try to connect,
	// one after the other: one attempt per retryOpen answers them all.
	if c.failed != nil && time.Since(c.failedAt) < retryOpen {
		return nil, nil, c.failed
	}
	st, meta, err := c.connect()
	if err != nil {
		c.failed, c.failedAt = fmt.Errorf("%w: %w", cache.ErrUnavailable, err), time.Now()
		c.logger.Warn("storage unavailable", zap.Error(err))
		return nil, nil, c.failed
	}
	c.failed = nil
	return st, meta, nil
}

// retryOpen is how long a failed open answers for itself.
const retryOpen = 2 * time.Second

// connect opens the bucket's client and the database (migrating it) and
// starts GC; mu is held.
func (c *sharedCluster) connect() (*composite.Store, *pgmeta.Store, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	blobs, err := s3.New(ctx, c.s3, c.logger.Named("s3"))
	if err != nil {
		return nil, nil, err
	}
	meta, err := pgmeta.Open(ctx, pgmeta.Options{DSN: c.dsn})
	if err != nil {
		return nil, nil, err
	}
	st, err := composite.New(composite.Options{
		Blobs: blobs, Meta: meta, Leases: meta.Leases(),
		UploadTTL: c.ttl, GCGrace: c.grace, Logger: c.logger,
	})
	if err != nil {
		meta.Close()
		return nil, nil, err
	}
	c.st, c.meta = st, meta
	if c.gcEvery > 0 {
		gctx, stop := context.WithCancel(context.Background())
		c.stopGC, c.gcDone = stop, make(chan struct{})
		go func() {
			defer close(c.gcDone)
			st.RunGC(gctx, c.gcEvery)
		}()
	}
	return st, meta, nil
}

// records opens the cluster for the auth layer's records.
func (c *sharedCluster) records() (authRecords, error) {
	_, meta, err := c.open()
	if err != nil {
		return nil, err
	}
	return meta, nil
}

// Destruct stops GC and closes the database pool.
func (c *sharedCluster) Destruct() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopGC != nil {
		c.stopGC()
		<-c.gcDone
		c.stopGC = nil
	}
	if c.meta != nil {
		c.meta.Close()
	}
	c.st, c.meta = nil, nil
	return nil
}

var _ caddy.Destructor = (*sharedCluster)(nil)
