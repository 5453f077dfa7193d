package zotadapter

// storage.storageDriver: zot's S3 driver (distribution's s3-aws
// parameters) as storage_s3. zot keeps its metadata beside it in a local
// database under rootDirectory, or in DynamoDB or Redis (cacheDriver);
// storage s3 here keeps it in PostgreSQL (metadata_postgres), which no
// zot setting names. The adapted config takes the database from an
// environment variable, and does not load until it is set: a registry
// that zot ran on S3 is not quietly moved to a local disk.

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3"
	"github.com/caddy-oci/caddy-oci/caddymodule"
)

// postgresEnv is the environment variable the adapted config of a zot S3
// storage reads the metadata database's URL from.
const postgresEnv = "CADDY_OCI_POSTGRES_DSN"

func (a *adapter) storageDriver(sd *object) error {
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
	root, err := sd.str("rootdirectory")
	if err != nil {
		return err
	}
	if root = strings.Trim(root, "/"); root != "" {
		c.Prefix = root + "/"
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
	a.reg.MetadataPostgres = "{env." + postgresEnv + "}"
	a.warn(sd.path, "blobs go to the bucket "+c.Bucket+" (storage_s3), and metadata to PostgreSQL, which no zot setting names: set "+postgresEnv+
		" to the database's URL (metadata_postgres), or the config does not load. The bucket's layout differs from zot's: images zot stored there are not served; copy them over (a sync_into from the old zot, or regctl/skopeo)")
	return nil
}
