package caddymodule

import (
	"fmt"
	"path/filepath"

	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3"
	"github.com/caddy-oci/caddy-oci/pgmeta"
)

// Backends is where a scaled-out registry keeps blobs and metadata, as
// its storage and metadata settings say, placeholders replaced: what
// `caddy oci migrate` writes into (package migrate), read from the same
// settings the registry runs with so the two cannot disagree.
type Backends struct {
	// Blobs are in the bucket S3 when it is not nil, else in the folder
	// Folder (`storage <dir> { shared }`), absolute.
	S3     *s3.Config
	Folder string
	// Metadata is in PostgreSQL at Postgres when it is set, else in the
	// embedded database in MetadataDir, absolute.
	Postgres    string
	MetadataDir string
}

// Backends checks the storage and metadata settings as Validate and
// Provision do and returns them. A config that is not scaled out (a
// storage folder with its embedded metadata) is an error: it is what a
// migration copies from, not into.
func (rg *Registry) Backends() (Backends, error) {
	if !rg.scaledOut() && !rg.StorageShared {
		return Backends{}, fmt.Errorf("the config keeps blobs and metadata in a storage folder (the single-node setup): a scaled-out destination has `storage s3 { }` or `metadata postgres <dsn>`")
	}
	if err := rg.validateScaleOut(); err != nil {
		return Backends{}, err
	}
	s3cfg, dsn, err := rg.expandScaleOut()
	if err != nil {
		return Backends{}, err
	}
	if err := pgmeta.CheckDSN(dsn); dsn != "" && err != nil {
		return Backends{}, fmt.Errorf("metadata postgres: %w", err)
	}
	b := Backends{Postgres: dsn}
	if rg.StorageS3 != nil {
		b.S3 = &s3cfg
	} else if b.Folder, err = filepath.Abs(rg.Storage); err != nil {
		return Backends{}, fmt.Errorf("storage %q: %w", rg.Storage, err)
	}
	if dsn == "" {
		if b.MetadataDir, err = filepath.Abs(rg.MetadataDir); err != nil {
			return Backends{}, fmt.Errorf("metadata_dir %q: %w", rg.MetadataDir, err)
		}
	}
	return b, nil
}
