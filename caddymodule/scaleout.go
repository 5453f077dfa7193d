package caddymodule

// Scaled-out backends: blobs in an S3-compatible bucket (`storage s3 {}`)
// and metadata in PostgreSQL (`metadata postgres <dsn>`), shared by any
// number of replicas (issue 11). The registry runs on them through
// package composite; this file parses and checks their config.

import (
	"context"
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/readcache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3"
	"github.com/caddy-oci/caddy-oci/cache/composite"
	"github.com/caddy-oci/caddy-oci/registry"
)

// S3Storage is `storage s3 { ... }`: the bucket (s3.Config, whose
// fields appear here as they are), and how this replica reads from it.
type S3Storage struct {
	s3.Config

	// Redirect answers blob GETs with a 307 to a presigned URL of the
	// object, once the request is authorised and the repository links
	// the blob, so the bytes flow from the bucket to the client and not
	// through the registry. Clients must reach the S3 endpoint
	// themselves. HEADs, manifests and blobs being mirrored are answered
	// as without it. (Caddyfile: `redirect [<expiry>]`.)
	Redirect bool `json:"redirect,omitempty"`
	// RedirectExpiry is how long a presigned URL stays valid; default
	// 5m, at most 7 days (S3's limit). A client follows the redirect at
	// once, and a short life limits what a leaked URL gives away.
	RedirectExpiry caddy.Duration `json:"redirect_expiry,omitempty"`
	// CacheDir keeps copies of the blobs this replica reads, so a blob
	// pulled again is served from local disk (by sendfile) instead of
	// S3; the least recently read copies go above CacheSize. Each
	// replica has its own; copies are verified against their digest
	// before they are kept. (Caddyfile: `cache <dir> <size>`.)
	CacheDir string `json:"cache_dir,omitempty"`
	// CacheSize bounds the copies in CacheDir, in bytes. Required with
	// CacheDir.
	CacheSize int64 `json:"cache_size,omitempty"`
}

// DefaultRedirectExpiry is how long presigned blob URLs live by default.
const DefaultRedirectExpiry = 5 * time.Minute

// unmarshalS3 parses the block of `storage s3`:
//
//	storage s3 {
//		bucket     <name>
//		endpoint   <url>        # omit for AWS
//		region     <region>
//		prefix     <key prefix>
//		access_key <key>        # {env.S3_ACCESS_KEY}
//		secret_key <secret>
//		path_style
//		part_size  <size>       # default 8MiB
//		redirect   [<expiry>]   # blob GETs: 307 to a presigned URL, default 5m
//		cache      <dir> <size> # local read-through copies of blobs, LRU
//	}
func unmarshalS3(d *caddyfile.Dispenser) (*S3Storage, error) {
	st := new(S3Storage)
	cfg := &st.Config
	for d.NextBlock(1) {
		sub := d.Val()
		switch sub {
		case "path_style":
			if d.NextArg() {
				return nil, d.Errf("storage s3: path_style takes no argument")
			}
			cfg.PathStyle = true
			continue
		case "redirect":
			st.Redirect = true
			args := d.RemainingArgs()
			if len(args) > 1 {
				return nil, d.Errf("storage s3: redirect takes at most one argument, the expiry (e.g. 5m)")
			}
			if len(args) == 1 {
				dur, err := caddy.ParseDuration(args[0])
				if err != nil || dur <= 0 {
					return nil, d.Errf("storage s3: redirect expiry %q: want a duration such as 5m", args[0])
				}
				st.RedirectExpiry = caddy.Duration(dur)
			}
			continue
		case "cache":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return nil, d.Errf("storage s3: cache needs a folder and a size (cache /var/cache/caddy-oci 50GiB)")
			}
			n, err := humanize.ParseBytes(args[1])
			if err != nil || n == 0 || n > 1<<60 {
				return nil, d.Errf("storage s3: cache size %q: want a size such as 50GiB", args[1])
			}
			st.CacheDir, st.CacheSize = args[0], int64(n)
			continue
		}
		var arg string
		if !d.AllArgs(&arg) {
			return nil, d.Errf("storage s3: %s needs exactly one argument", sub)
		}
		switch sub {
		case "bucket":
			cfg.Bucket = arg
		case "endpoint":
			cfg.Endpoint = arg
		case "region":
			cfg.Region = arg
		case "prefix":
			cfg.Prefix = arg
		case "access_key":
			cfg.AccessKey = arg
		case "secret_key":
			cfg.SecretKey = arg
		case "part_size":
			n, err := humanize.ParseBytes(arg)
			if err != nil || n > 1<<40 {
				return nil, d.Errf("storage s3: part_size %q: want a size such as 8MiB", arg)
			}
			cfg.PartSize = int64(n)
		default:
			return nil, d.Errf("storage s3: unrecognized subdirective %q (known: bucket, endpoint, region, prefix, access_key, secret_key, path_style, part_size, redirect, cache)", sub)
		}
	}
	if cfg.Bucket == "" {
		return nil, d.Err("storage s3: bucket is required")
	}
	if err := st.check(); err != nil {
		return nil, d.Err(err.Error())
	}
	return st, nil
}

// check refuses read settings that do not go together; errors name the
// directive.
func (st *S3Storage) check() error {
	switch {
	case st.Redirect && st.CacheDir != "":
		return fmt.Errorf("storage s3: redirect and cache exclude each other: with redirect, clients fetch blobs from S3 and the cache would never be read")
	case st.RedirectExpiry != 0 && !st.Redirect:
		return fmt.Errorf("storage s3: redirect_expiry needs redirect")
	case st.RedirectExpiry < 0 || time.Duration(st.RedirectExpiry) > s3.MaxRedirectExpiry:
		return fmt.Errorf("storage s3: redirect expiry %s is outside (0, %s]", time.Duration(st.RedirectExpiry), s3.MaxRedirectExpiry)
	case (st.CacheDir == "") != (st.CacheSize == 0):
		return fmt.Errorf("storage s3: cache needs both a folder and a size")
	case st.CacheSize < 0:
		return fmt.Errorf("storage s3: cache size %d is negative", st.CacheSize)
	}
	return nil
}

// blobStore opens the blob store these settings describe: the bucket,
// presigning its URLs with redirect, behind a read cache with cache. It
// contacts nothing but the cache folder.
func (st *S3Storage) blobStore(cfg s3.Config, log *zap.Logger) (blobstore.Store, error) {
	if err := st.check(); err != nil {
		return nil, err
	}
	bucket, err := s3.New(context.Background(), cfg, log.Named("s3"))
	if err != nil {
		return nil, fmt.Errorf("storage s3: %w", err)
	}
	switch {
	case st.Redirect:
		r, err := bucket.Redirecting(orDefault(time.Duration(st.RedirectExpiry), DefaultRedirectExpiry))
		if err != nil {
			return nil, fmt.Errorf("storage s3: redirect: %w", err)
		}
		return r, nil
	case st.CacheDir != "":
		c, err := readcache.New(bucket, readcache.Options{Dir: st.CacheDir, MaxBytes: st.CacheSize, Logger: log.Named("readcache")})
		if err != nil {
			return nil, fmt.Errorf("storage s3: cache: %w", err)
		}
		return c, nil
	}
	return bucket, nil
}

// opensBlock reports whether a block follows on the current line,
// without consuming anything: `storage s3 { ... }` is the bucket,
// `storage s3` alone a folder named s3.
func opensBlock(d *caddyfile.Dispenser) bool {
	line := d.Line()
	if !d.Next() {
		return false
	}
	open := d.Val() == "{" && d.Line() == line
	d.Prev()
	return open
}

// unmarshalStorageBlock parses the optional block of `storage <dir>`:
//
//	storage <dir> {
//		shared   # every replica mounts the folder (with metadata postgres)
//	}
func (rg *Registry) unmarshalStorageBlock(d *caddyfile.Dispenser) error {
	for d.NextBlock(1) {
		switch d.Val() {
		case "shared":
			if d.NextArg() {
				return d.Errf("storage %s: shared takes no argument", rg.Storage)
			}
			rg.StorageShared = true
		default:
			return d.Errf("storage %s: unrecognized subdirective %q (known: shared)", rg.Storage, d.Val())
		}
	}
	return nil
}

// unmarshalMetadata parses `metadata postgres <dsn>`.
func (rg *Registry) unmarshalMetadata(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) != 2 || args[0] != "postgres" {
		return d.Err("metadata: want `metadata postgres <dsn>` (a postgres:// URL or key=value pairs; {env.DATABASE_URL} keeps the password out of the file)")
	}
	rg.MetadataPostgres = args[1]
	return nil
}

// scaledOut reports whether the registry runs on the split store
// (package composite): blobs in S3 or metadata in PostgreSQL.
func (rg *Registry) scaledOut() bool { return rg.StorageS3 != nil || rg.MetadataPostgres != "" }

// validateScaleOut refuses combinations this version does not run, each
// with what to do instead. Those it runs: S3 with PostgreSQL (replicas),
// S3 with the embedded metadata in metadata_dir (one node), and a folder
// every replica mounts with PostgreSQL (`storage <dir> { shared }`).
func (rg *Registry) validateScaleOut() error {
	switch {
	case rg.StorageShared && rg.StorageS3 != nil:
		return fmt.Errorf("storage_shared is for a folder; with storage s3, remove it")
	case rg.StorageShared && rg.Storage == "":
		return fmt.Errorf("storage_shared needs the folder every replica mounts: `storage <dir> { shared }`")
	case rg.StorageShared && rg.MetadataPostgres == "":
		return fmt.Errorf("storage %s { shared } needs `metadata postgres <dsn>`: replicas that share the folder must share its metadata (the embedded database is one node's); on one node, remove shared", rg.Storage)
	case !rg.scaledOut():
		return nil
	case rg.StorageS3 == nil && !rg.StorageShared:
		return fmt.Errorf("metadata postgres needs blobs every replica reaches: add `storage s3 { ... }`, or, if every replica mounts the storage folder, say so with `storage <dir> { shared }`")
	case rg.StorageS3 != nil && rg.Storage != "":
		return fmt.Errorf("storage %q and storage s3 are exclusive: blobs live in one place", rg.Storage)
	case rg.MetadataPostgres != "" && rg.MetadataDir != "":
		return fmt.Errorf("metadata_dir is for the embedded metadata; with metadata postgres, remove it")
	case rg.MetadataPostgres == "" && rg.MetadataDir == "":
		return fmt.Errorf("storage s3 without `metadata postgres` keeps the metadata in the embedded database on this machine: add `metadata_dir <folder>` (a local folder that lasts, outside any cache), or `metadata postgres <dsn>` to run several replicas")
	case rg.StorageReserve != 0 || rg.StorageReservePercent != 0:
		return fmt.Errorf("storage_reserve is not supported with storage s3 or metadata postgres: an object store has no free space to keep, and PostgreSQL keeps its own")
	}
	if rg.StorageS3 == nil {
		return nil
	}
	return rg.StorageS3.check()
}

// expandScaleOut replaces placeholders ({env.S3_SECRET_KEY}) in the
// scaled-out settings: secrets come from the environment, not the file.
func (rg *Registry) expandScaleOut() (s3.Config, string, error) {
	repl := caddy.NewReplacer()
	var c s3.Config
	if rg.StorageS3 != nil {
		c = rg.StorageS3.Config
	}
	for name, p := range map[string]*string{
		"bucket": &c.Bucket, "endpoint": &c.Endpoint, "region": &c.Region, "prefix": &c.Prefix,
		"access_key": &c.AccessKey, "secret_key": &c.SecretKey,
	} {
		v, err := repl.ReplaceOrErr(*p, true, true)
		if err != nil {
			return s3.Config{}, "", fmt.Errorf("storage s3: %s: %w", name, err)
		}
		*p = v
	}
	dsn, err := repl.ReplaceOrErr(rg.MetadataPostgres, true, true)
	if err != nil {
		return s3.Config{}, "", fmt.Errorf("metadata postgres: %w", err)
	}
	return c, dsn, nil
}

// Both stores serve the registry.
var (
	_ registry.Store          = (*cache.Store)(nil)
	_ registry.Store          = (*composite.Store)(nil)
	_ registry.BlobRedirector = (*composite.Store)(nil)
)
