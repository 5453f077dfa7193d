package zotadapter

// storage.storageDriver: zot's S3 driver (distribution's s3-aws
// parameters) as storage_s3. zot keeps its metadata beside it in a local
// database under rootDirectory, or, with remoteCache, in DynamoDB or
// Redis (cacheDriver), which is how zot runs several replicas. So here:
// without remoteCache, one node with the embedded metadata in
// rootDirectory/meta (metadata_dir); with it, PostgreSQL
// (metadata_postgres), which no zot setting names: the adapted config
// takes the database from an environment variable, and does not load
// until it is set, so that replicas are not quietly given a local
// database each.

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3"
	"github.com/caddy-oci/caddy-oci/caddymodule"
)

// postgresEnv is the environment variable the adapted config of a zot S3
// storage reads the metadata database's URL from.
const postgresEnv = "CADDY_OCI_POSTGRES_DSN"

func (a *adapter) storageDriver(sd *object, root string, remoteCache bool) error {
	name, err := sd.str("name")
	if err != nil {
		return err
	}
	if !strings.EqualFold(name, "s3") {
		a.warn(sd.path, fmt.Sprintf("the %q driver is not supported (s3 is): the registry stores on the local filesystem under rootDirectory", name))
		for k := range sd.vals {
			sd.read[k] = true
		}
		return nil
	}
	c := &s3.Config{}
	if c.Bucket, err = sd.str("bucket"); err != nil {
		return err
	}
	if c.Bucket == "" {
		return fmt.Errorf("%s: needs a bucket", sd.path)
	}
	if c.Region, err = sd.str("region"); err != nil {
		return err
	}
	secure, err := sd.boolean("secure", true)
	if err != nil {
		return err
	}
	if c.Endpoint, err = sd.str("regionendpoint"); err != nil {
		return err
	}
	if c.Endpoint != "" && !strings.Contains(c.Endpoint, "://") {
		// distribution's driver picks the scheme by secure.
		if secure {
			c.Endpoint = "https://" + c.Endpoint
		} else {
			c.Endpoint = "http://" + c.Endpoint
		}
	}
	if c.PathStyle, err = sd.boolean("forcepathstyle", false); err != nil {
		return err
	}
	if c.AccessKey, err = sd.str("accesskey"); err != nil {
		return err
	}
	if c.SecretKey, err = sd.str("secretkey"); err != nil {
		return err
	}
	if c.SecretKey != "" {
		a.warn(sd.at("secretkey"), "copied into the adapted config: keep it private, or set storage_s3.secret_key to {env.S3_SECRET_KEY} in it")
	}
	prefix, err := sd.str("rootdirectory")
	if err != nil {
		return err
	}
	if prefix = strings.Trim(prefix, "/"); prefix != "" {
		c.Prefix = prefix + "/"
	}
	if v, ok := sd.get("chunksize"); ok {
		// distribution takes a number or a string of one.
		var n int64
		switch x := v.(type) {
		case json.Number:
			n, err = x.Int64()
		case string:
			n, err = strconv.ParseInt(x, 10, 64)
		default:
			err = fmt.Errorf("not a number")
		}
		if err != nil {
			return fmt.Errorf("%s: must be a size in bytes, not %s", sd.at("chunksize"), kind(v))
		}
		c.PartSize = n
	}
	sd.unsupported("skipverify", "not supported: the S3 server's certificate is always verified")
	var left []string
	for k := range sd.vals {
		if !sd.read[k] {
			left = append(left, sd.keys[k])
			sd.read[k] = true
		}
	}
	sort.Strings(left)
	for _, k := range left {
		a.warn(sd.at(k), "not supported by storage s3 here; ignored")
	}
	a.reg.StorageS3 = &caddymodule.S3Storage{Config: *c}
	const layout = "The bucket's layout differs from zot's: images zot stored there are not served; copy them over (a sync_into from the old zot, or regctl/skopeo)"
	if !remoteCache {
		if root == "" {
			return fmt.Errorf("storage.rootDirectory: required with storageDriver s3 (zot refuses to start without it): the metadata is kept under it")
		}
		a.reg.MetadataDir = filepath.Join(root, "meta")
		a.warn(sd.path, "blobs go to the bucket "+c.Bucket+" (storage_s3), and metadata to the embedded database in "+a.reg.MetadataDir+
			" (metadata_dir), as zot keeps its own under rootDirectory: one node. "+layout)
		return nil
	}
	a.reg.MetadataPostgres = "{env." + postgresEnv + "}"
	a.warn(sd.path, "blobs go to the bucket "+c.Bucket+" (storage_s3), and, as remoteCache shares zot's metadata between replicas, metadata to PostgreSQL, which no zot setting names: set "+postgresEnv+
		" to the database's URL (metadata_postgres), or the config does not load. "+layout)
	return nil
}
