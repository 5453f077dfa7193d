package migrate

import (
	"bytes"
	"context"
	"github.com/jackc/pgx/v5"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3"
	"github.com/caddy-oci/caddy-oci/cache/metastore/badgermeta"
	"github.com/caddy-oci/caddy-oci/caddymodule"
	"github.com/caddy-oci/caddy-oci/pgmeta"
)

// runCmd runs `caddy oci migrate args...` in this process.
func runCmd(args ...string) (string, error) {
	c := NewCommand()
	var out bytes.Buffer
	c.SetOut(&out)
	c.SetErr(&out)
	c.SetArgs(args)
	err := c.ExecuteContext(context.Background())
	return out.String(), err
}

// flags are the destination flags naming d, and the environment that
// carries its secrets, as an operator writes them.
func (d dest) flags(t *testing.T) []string {
	t.Helper()
	var args []string
	if c := d.b.S3; c != nil {
		t.Setenv(EnvS3AccessKey, c.AccessKey)
		t.Setenv(EnvS3SecretKey, c.SecretKey)
		args = append(args, "--s3-bucket", c.Bucket, "--s3-endpoint", c.Endpoint,
			"--s3-region", c.Region, "--s3-prefix", c.Prefix, "--s3-path-style")
	} else {
		args = append(args, "--storage", d.b.Folder, "--storage-shared")
	}
	if d.b.Postgres != "" {
		t.Setenv(EnvPostgres, d.b.Postgres)
	} else {
		t.Setenv(EnvPostgres, "postgres://nobody@127.0.0.1:1/not-used") // --metadata-dir wins
		args = append(args, "--metadata-dir", d.b.MetadataDir)
	}
	return args
}

// caddyfile is the config a server on d runs with, secrets from the
// environment.
func (d dest) caddyfile(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("http://localhost:5000 {\n\toci_registry {\n")
	if c := d.b.S3; c != nil {
		t.Setenv("TEST_S3_KEY", c.AccessKey)
		t.Setenv("TEST_S3_SECRET", c.SecretKey)
		b.WriteString("\t\tstorage s3 {\n\t\t\tbucket " + c.Bucket + "\n\t\t\tendpoint " + c.Endpoint +
			"\n\t\t\tregion " + c.Region + "\n\t\t\tprefix " + c.Prefix +
			"\n\t\t\taccess_key {env.TEST_S3_KEY}\n\t\t\tsecret_key {env.TEST_S3_SECRET}\n\t\t\tpath_style\n\t\t}\n")
	} else {
		b.WriteString("\t\tstorage " + d.b.Folder + " {\n\t\t\tshared\n\t\t}\n")
	}
	if d.b.Postgres != "" {
		t.Setenv("TEST_DATABASE_URL", d.b.Postgres)
		b.WriteString("\t\tmetadata postgres {env.TEST_DATABASE_URL}\n")
	} else {
		b.WriteString("\t\tmetadata_dir " + d.b.MetadataDir + "\n")
	}
	b.WriteString("\t}\n}\n")
	path := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestCommand runs `caddy oci migrate` as an operator would, into each
// kind of destination, named by flags and by the new server's Caddyfile:
// the environment carries the secrets, which the output never shows; the
// summary counts what was copied and verified; a second run copies
// nothing.
func TestCommand(t *testing.T) {
	for _, k := range destKinds {
		for _, how := range []string{"flags", "config"} {
			t.Run(k.name+"/"+how, func(t *testing.T) {
				dir := t.TempDir()
				fillFolder(t, dir)
				d := k.new(t, dir)
				args := []string{"--from", dir}
				if how == "flags" {
					args = append(args, d.flags(t)...)
				} else {
					args = append(args, "--config", d.caddyfile(t))
				}
				out, err := runCmd(args...)
				t.Logf("first run:\n%s", out)
				if err != nil {
					t.Fatalf("first run: %v", err)
				}
				var secrets []string
				if d.b.S3 != nil {
					secrets = append(secrets, d.b.S3.SecretKey)
				}
				if d.b.Postgres != "" {
					secrets = append(secrets, d.b.Postgres)
				}
				for _, secret := range secrets {
					if strings.Contains(out, secret) {
						t.Fatalf("the output shows a secret (%q)", secret)
					}
				}
				if !strings.Contains(out, "copied: 24 blobs") || !strings.Contains(out, "verified: 24 blobs") || !strings.Contains(out, "MB/s") {
					t.Fatalf("no summary of what was copied and verified:\n%s", out)
				}
				out, err = runCmd(args...)
				t.Logf("second run:\n%s", out)
				if err != nil || !strings.Contains(out, "copied: 0 blobs (0 bytes), 0 blob links, 0 manifests, 0 tags, 0 tag fetch times, 0 API keys, 0 sessions, 0 secrets") ||
					!strings.Contains(out, "already there: 24 blobs") {
					t.Fatalf("second run copied something: %v\n%s", err, out)
				}
			})
		}
	}
}

// TestDestinationFlags: the flags name every destination the registry
// runs on, checked by the registry's own rules; a mistake is refused by
// the flag's or the setting's name before anything is opened.
func TestDestinationFlags(t *testing.T) {
	abs := func(p string) string { a, _ := filepath.Abs(p); return a }
	good := []struct {
		cc   commandConfig
		want caddymodule.Backends
	}{
		{commandConfig{s3: s3.Config{Bucket: "b", Region: "r"}, dsn: "postgres://h/db"},
			caddymodule.Backends{S3: &s3.Config{Bucket: "b", Region: "r"}, Postgres: "postgres://h/db"}},
		{commandConfig{s3: s3.Config{Bucket: "b", Prefix: "p/", PathStyle: true}, partSize: "16MiB", metadataDir: "meta"},
			caddymodule.Backends{S3: &s3.Config{Bucket: "b", Prefix: "p/", PathStyle: true, PartSize: 16 << 20}, MetadataDir: abs("meta")}},
		{commandConfig{storage: "/mnt/reg", storageShared: true, dsn: "host=db dbname=reg"},
			caddymodule.Backends{Folder: "/mnt/reg", Postgres: "host=db dbname=reg"}},
	}
	for _, g := range good {
		got, err := g.cc.destination()
		if err != nil || !sameBackends(got, g.want) {
			t.Errorf("%+v: %+v, %v; want %+v", g.cc, got, err, g.want)
		}
	}
	bad := []struct {
		cc   commandConfig
		want string
	}{
		{commandConfig{}, "no destination"},
		{commandConfig{s3: s3.Config{Region: "r"}, dsn: "postgres://h/db"}, "--s3-bucket is required"},
		{commandConfig{s3: s3.Config{Bucket: "b"}}, "add `metadata_dir <folder>`"},
		{commandConfig{s3: s3.Config{Bucket: "b"}, dsn: "postgres://h/db", metadataDir: "m"}, "metadata_dir is for the embedded metadata"},
		{commandConfig{s3: s3.Config{Bucket: "b"}, partSize: "lots", dsn: "postgres://h/db"}, "--s3-part-size"},
		{commandConfig{s3: s3.Config{Bucket: "b"}, storage: "/mnt/reg", storageShared: true, dsn: "postgres://h/db"}, "storage_shared is for a folder"},
		{commandConfig{storage: "/mnt/reg", dsn: "postgres://h/db"}, "--storage-shared"},
		{commandConfig{storage: "/mnt/reg", storageShared: true, metadataDir: "m"}, "needs `metadata postgres <dsn>`"},
		{commandConfig{dsn: "postgres://h/db"}, "no destination for blobs"},
		{commandConfig{storage: "/mnt/reg", storageShared: true, dsn: "postgres://u:pw@h/db?port=x%zz"}, "does not parse"},
		{commandConfig{config: "Caddyfile", dsn: "postgres://h/db"}, "leave out the destination flags"},
		{commandConfig{adapter: "caddyfile", dsn: "postgres://h/db"}, "--adapter goes with --config"},
	}
	for _, b := range bad {
		_, err := b.cc.destination()
		if err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%+v: %v; want an error with %q", b.cc, err, b.want)
		}
		if err != nil && strings.Contains(err.Error(), "pw@") {
			t.Errorf("the error shows the DSN's password: %v", err)
		}
	}
}

// TestDestinationConfig: --config takes the oci_registry handler's
// storage and metadata from a Caddyfile or JSON config, placeholders
// replaced; a config without a scaled-out handler, or with handlers on
// different storage, is refused.
func TestDestinationConfig(t *testing.T) {
	t.Setenv("TEST_BUCKET_SECRET", "s3cr3t")
	write := func(name, body string) string {
		p := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caddyfile := write("Caddyfile", `
a.example.com {
	oci_registry {
		storage s3 {
			bucket registry
			region us-east-1
			secret_key {env.TEST_BUCKET_SECRET}
			redirect
		}
		metadata_dir /var/lib/caddy-oci/meta
	}
}
b.example.com {
	route {
		oci_registry {
			storage s3 {
				bucket registry
				region us-east-1
				secret_key {env.TEST_BUCKET_SECRET}
				cache /var/cache/oci 1GiB
			}
			metadata_dir /var/lib/caddy-oci/meta
		}
	}
}
`)
	got, err := backendsFromConfig(caddyfile, "")
	want := caddymodule.Backends{S3: &s3.Config{Bucket: "registry", Region: "us-east-1", SecretKey: "s3cr3t"}, MetadataDir: "/var/lib/caddy-oci/meta"}
	if err != nil || !sameBackends(got, want) {
		t.Fatalf("Caddyfile: %+v, %v; want %+v", got, err, want)
	}
	js := write("oci.json", `{"apps":{"http":{"servers":{"s":{"listen":[":5000"],"routes":[{"handle":[
		{"handler":"oci_registry","storage":"/var/lib/caddy-oci"},
		{"handler":"oci_registry","storage":"/mnt/reg","storage_shared":true,"metadata_postgres":"host=db dbname=reg"}]}]}}}}}`)
	got, err = backendsFromConfig(js, "")
	want = caddymodule.Backends{Folder: "/mnt/reg", Postgres: "host=db dbname=reg"}
	if err != nil || !sameBackends(got, want) {
		t.Fatalf("JSON: %+v, %v; want %+v", got, err, want)
	}

	for name, c := range map[string]struct{ body, want string }{
		"single-node": {`{"apps":{"http":{"servers":{"s":{"listen":[":5000"],"routes":[{"handle":[{"handler":"oci_registry","storage":"/var/lib/caddy-oci"}]}]}}}}}`,
			"the single-node setup"},
		"no handler": {`{"apps":{"http":{"servers":{"s":{"listen":[":5000"],"routes":[{"handle":[{"handler":"static_response"}]}]}}}}}`,
			"no oci_registry handler"},
		"two destinations": {`{"apps":{"http":{"servers":{"s":{"listen":[":5000"],"routes":[{"handle":[
			{"handler":"oci_registry","storage_s3":{"bucket":"one","secret_key":"hidden1"},"metadata_dir":"/m1"},
			{"handler":"oci_registry","storage_s3":{"bucket":"two","secret_key":"hidden2"},"metadata_dir":"/m2"}]}]}}}}}`,
			"different storage"},
		"refused combination": {`{"apps":{"http":{"servers":{"s":{"listen":[":5000"],"routes":[{"handle":[{"handler":"oci_registry","storage_s3":{"bucket":"b"}}]}]}}}}}`,
			"add `metadata_dir <folder>`"},
	} {
		_, err := backendsFromConfig(write(name+".json", c.body), "")
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "hidden") {
			t.Errorf("%s: %v; want an error with %q and no secret", name, err, c.want)
		}
	}
	if _, err := backendsFromConfig(filepath.Join(t.TempDir(), "missing.json"), ""); err == nil || !strings.Contains(err.Error(), "--config") {
		t.Errorf("a missing config: %v", err)
	}
}

// TestDestinationInUse: metadata a running server holds is refused with
// what to do, the embedded database by its lock, PostgreSQL by the
// replica's connections; nothing is copied. Once the server stops, the
// run goes through.
func TestDestinationInUse(t *testing.T) {
	dir := t.TempDir()
	fillFolder(t, dir)

	emb := destKinds[1].new(t, dir)
	db, err := badgermeta.Open(emb.b.MetadataDir)
	if err != nil {
		t.Fatal(err)
	}
	out, err := runCmd(append([]string{"--from", dir}, emb.flags(t)...)...)
	if err == nil || !strings.Contains(err.Error(), "in use: stop the server") {
		t.Fatalf("into an embedded database in use: %v\n%s", err, out)
	}
	if keys := emb.blobKeys(t); len(keys) != 0 {
		t.Fatalf("copied into a destination in use: %v", keys)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if out, err := runCmd(append([]string{"--from", dir}, emb.flags(t)...)...); err != nil {
		t.Fatalf("once the server stopped: %v\n%s", err, out)
	}

	own := dest{b: emb.b}
	own.b.MetadataDir = filepath.Join(dir, "meta")
	if out, err := runCmd(append([]string{"--from", dir}, own.flags(t)...)...); err == nil || !strings.Contains(err.Error(), "the storage folder's own metadata") {
		t.Fatalf("into the folder's own metadata: %v\n%s", err, out)
	}

	pg := destKinds[2].new(t, dir)
	// A replica of a release whose schema is older than this one's (here:
	// none at all) serves from the database: refused before the schema's
	// migrations would change it under the replica.
	ctx := context.Background()
	oldCfg, err := pgx.ParseConfig(pg.b.Postgres)
	if err != nil {
		t.Fatal(err)
	}
	oldCfg.RuntimeParams["application_name"] = pgmeta.AppName
	oldReplica, err := pgx.ConnectConfig(ctx, oldCfg)
	if err != nil {
		t.Fatal(err)
	}
	out, err = runCmd(append([]string{"--from", dir}, pg.flags(t)...)...)
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("into a database an older replica serves from: %v\n%s", err, out)
	}
	var tables int
	if err := oldReplica.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE tablename = 'schema_migrations'`).Scan(&tables); err != nil || tables != 0 {
		t.Fatalf("the refused migration changed the schema under the replica: %d schema_migrations tables, %v", tables, err)
	}
	oldReplica.Close(ctx)

	replica, err := pgmeta.Open(context.Background(), pgmeta.Options{DSN: pg.b.Postgres})
	if err != nil {
		t.Fatal(err)
	}
	out, err = runCmd(append([]string{"--from", dir}, pg.flags(t)...)...)
	if err == nil || !strings.Contains(err.Error(), "in use") || !strings.Contains(err.Error(), "stop them") {
		replica.Close()
		t.Fatalf("into a database a replica serves from: %v\n%s", err, out)
	}
	if keys := pg.blobKeys(t); len(keys) != 0 {
		t.Fatalf("copied into a destination in use: %v", keys)
	}
	replica.Close()
	// A DSN naming the application as the replicas do does not make the
	// command see its own connections as a replica's.
	pg.b.Postgres += "&application_name=" + pgmeta.AppName
	if out, err := runCmd(append([]string{"--from", dir}, pg.flags(t)...)...); err != nil {
		t.Fatalf("once the replica stopped: %v\n%s", err, out)
	}
}
