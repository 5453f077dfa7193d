package caddymodule

// Scaled-out backends: blobs in an S3-compatible bucket (`storage s3 {}`)
// and metadata in PostgreSQL (`metadata postgres <dsn>`), shared by any
// number of replicas (issue 11). The registry runs on them through
// package composite; this file parses and checks their config.

import (
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3"
	"github.com/caddy-oci/caddy-oci/cache/composite"
	"github.com/caddy-oci/caddy-oci/registry"
)

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
//	}
func unmarshalS3(d *caddyfile.Dispenser) (*s3.Config, error) {
	cfg := new(s3.Config)
	for d.NextBlock(1) {
		sub := d.Val()
		if sub == "path_style" {
			if d.NextArg() {
				return nil, d.Errf("storage s3: path_style takes no argument")
			}
			cfg.PathStyle = true
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
			return nil, d.Errf("storage s3: unrecognized subdirective %q (known: bucket, endpoint, region, prefix, access_key, secret_key, path_style, part_size)", sub)
		}
	}
	if cfg.Bucket == "" {
		return nil, d.Err("storage s3: bucket is required")
	}
	return cfg, nil
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

// unmarshalMetadata parses `metadata postgres <dsn>`.
func (rg *Registry) unmarshalMetadata(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) != 2 || args[0] != "postgres" {
		return d.Err("metadata: want `metadata postgres <dsn>` (a postgres:// URL or key=value pairs; {env.DATABASE_URL} keeps the password out of the file)")
	}
	rg.MetadataPostgres = args[1]
	return nil
}

// scaledOut reports whether the registry runs on the scaled-out backends.
func (rg *Registry) scaledOut() bool { return rg.StorageS3 != nil || rg.MetadataPostgres != "" }

// validateScaleOut refuses combinations this version does not run, each
// with what to do instead.
func (rg *Registry) validateScaleOut() error {
	if !rg.scaledOut() {
		return nil
	}
	switch {
	case rg.StorageS3 == nil:
		return fmt.Errorf("metadata postgres needs blobs every replica reaches: add `storage s3 { ... }` (a shared folder is not supported yet)")
	case rg.MetadataPostgres == "":
		return fmt.Errorf("storage s3 needs `metadata postgres <dsn>` in this version (S3 with the embedded metadata is not supported yet)")
	case rg.Storage != "":
		return fmt.Errorf("storage %q and storage s3 are exclusive: blobs live in one place", rg.Storage)
	case rg.MetadataDir != "":
		return fmt.Errorf("metadata_dir is for the embedded metadata; with metadata postgres, remove it")
	case rg.StorageReserve != 0 || rg.StorageReservePercent != 0:
		return fmt.Errorf("storage_reserve applies to a local folder; an object store has no free space to keep")
	case rg.MirrorCacheSize != 0:
		return fmt.Errorf("mirror_cache_size is not supported on storage s3 yet (the cache size is not counted across replicas); remove it, or run the mirror on a storage folder")
	case rg.MaxUploadBytes > 0 || rg.MaxUploadBytesPerClient > 0:
		return fmt.Errorf("max_upload_bytes and max_upload_bytes_per_client are not counted across replicas yet; remove them (max_uploads_per_client, max_uploads_per_repository and max_blob_size apply)")
	}
	return nil
}

// expandScaleOut replaces placeholders ({env.S3_SECRET_KEY}) in the
// scaled-out settings: secrets come from the environment, not the file.
func (rg *Registry) expandScaleOut() (s3.Config, string, error) {
	repl := caddy.NewReplacer()
	c := *rg.StorageS3
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
	_ registry.Store = (*cache.Store)(nil)
	_ registry.Store = (*composite.Store)(nil)
)
