package zotadapter

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3"
)

// TestS3LocalMetadata: zot on S3 without remoteCache keeps its metadata
// under rootDirectory; here that is the embedded database in
// rootDirectory/meta, one node, and no PostgreSQL is asked for.
func TestS3LocalMetadata(t *testing.T) {
	dir := t.TempDir()
	a := adaptFixture(t, "s3-local.json", map[string]string{"@DIR@": dir, "@PORT@": "5005", "@REGION@": "us-east-1",
		"@ENDPOINT@": "127.0.0.1:9000", "@BUCKET@": "zot", "@ACCESSKEY@": "k", "@SECRETKEY@": "s"})
	if a.reg.StorageS3 == nil || a.reg.StorageS3.Endpoint != "http://127.0.0.1:9000" || a.reg.Storage != "" ||
		a.reg.MetadataDir != filepath.Join(dir, "zot", "meta") || a.reg.MetadataPostgres != "" {
		t.Errorf("storage %q, storage_s3 %s, metadata_dir %q, metadata_postgres %q",
			a.reg.Storage, mustJSON(t, a.reg.StorageS3), a.reg.MetadataDir, a.reg.MetadataPostgres)
	}
	if !a.warned("storage.storageDriver", "(metadata_dir)") || a.warned("storage.storageDriver", postgresEnv) {
		t.Errorf("warnings %v", a.warnings)
	}
	if err := a.reg.Validate(); err != nil {
		t.Errorf("the adapted registry does not validate: %v", err)
	}
}

// TestS3: zot's S3 storage with remoteCache (examples/config-s3.json
// shape, zot's replicas) becomes storage_s3, with the metadata database
// from the environment; the DynamoDB cache and keys storage s3 has no
// use for are named.
func TestS3(t *testing.T) {
	dir := t.TempDir()
	a := adaptFixture(t, "s3.json", map[string]string{"@DIR@": dir, "@PORT@": "5005"})
	want := s3.Config{Bucket: "zot-storage", Region: "us-east-2", Endpoint: "http://minio.internal:9000", PathStyle: true,
		Prefix: "zot/", AccessKey: "AKIAEXAMPLE", SecretKey: "s3cret", PartSize: 10 << 20}
	if a.reg.StorageS3 == nil || a.reg.StorageS3.Config != want || a.reg.Storage != "" || a.reg.MetadataPostgres != "{env."+postgresEnv+"}" {
		t.Errorf("storage %q, storage_s3 %s, metadata_postgres %q", a.reg.Storage, mustJSON(t, a.reg.StorageS3), a.reg.MetadataPostgres)
	}
	for _, w := range [][2]string{
		{"storage.storageDriver", postgresEnv},
		{"storage.storageDriver", "not served"},
		{"storage.storageDriver.secretkey", "copied"},
		{"storage.storageDriver.storageclass", "not supported"},
		{"storage.cacheDriver", "PostgreSQL"},
		{"storage.remoteCache", "PostgreSQL"},
	} {
		if !a.warned(w[0], w[1]) {
			t.Errorf("no warning %q on %s", w[1], w[0])
		}
	}
	// Without the database's URL the config does not load, naming what
	// is missing, rather than storing on a local disk.
	a.cfg.Admin = &caddy.AdminConfig{Disabled: true}
	cfg, _ := json.Marshal(a.cfg)
	t.Setenv(postgresEnv, "")
	if err := caddy.Load(cfg, true); err == nil {
		stopCaddy(t)
		t.Fatal("loaded without a metadata database")
	} else if !strings.Contains(err.Error(), "metadata postgres") {
		t.Errorf("error %v does not name metadata postgres", err)
	}

	// Another driver stays on the local filesystem.
	b := adaptString(t, `{"storage":{"rootDirectory":"/srv/zot","storageDriver":{"name":"gcs","bucket":"b"}}}`)
	if b.reg.StorageS3 != nil || b.reg.Storage != "/srv/zot" || !b.warned("storage.storageDriver", `"gcs" driver is not supported`) {
		t.Errorf("gcs: %s %v", b.raw, b.warnings)
	}
}
