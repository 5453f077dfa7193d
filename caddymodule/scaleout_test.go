package caddymodule

import (
	"encoding/json"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

func TestUnmarshalScaleOut(t *testing.T) {
	got := Registry{}
	err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`oci_registry {
		storage s3 {
			bucket     registry
			endpoint   https://s3.example.internal
			region     eu-west-1
			prefix     caddy-oci/
			access_key {env.S3_ACCESS_KEY}
			secret_key {env.S3_SECRET_KEY}
			path_style
			part_size  16MiB
		}
		metadata postgres {env.DATABASE_URL}
	}`))
	if err != nil {
		t.Fatal(err)
	}
	want := Registry{
		StorageS3: &S3Storage{Config: s3.Config{
			Bucket: "registry", Endpoint: "https://s3.example.internal", Region: "eu-west-1", Prefix: "caddy-oci/",
			AccessKey: "{env.S3_ACCESS_KEY}", SecretKey: "{env.S3_SECRET_KEY}", PathStyle: true, PartSize: 16 << 20,
		}},
		MetadataPostgres: "{env.DATABASE_URL}",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}

	for _, tc := range []struct{ input, wantErr string }{
		{"storage s3 {\n}", "bucket is required"},
		{"storage s3 {\nbucket b\nacl public\n}", `unrecognized subdirective "acl"`},
		{"storage s3 {\nbucket\n}", "bucket needs exactly one argument"},
		{"storage s3 {\nbucket b\npath_style yes\n}", "path_style takes no argument"},
		{"storage s3 {\nbucket b\npart_size lots\n}", "part_size"},
		{"storage a b", "storage needs exactly one argument"},
		{"storage s3 {\nbucket b\nredirect 5m 6m\n}", "storage s3: redirect takes at most one argument"},
		{"storage s3 {\nbucket b\nredirect soon\n}", `storage s3: redirect expiry "soon"`},
		{"storage s3 {\nbucket b\nredirect -1m\n}", `storage s3: redirect expiry "-1m"`},
		{"storage s3 {\nbucket b\nredirect 8d\n}", "storage s3: redirect expiry 192h0m0s is outside"},
		{"storage s3 {\nbucket b\ncache /c\n}", "storage s3: cache needs a folder and a size"},
		{"storage s3 {\nbucket b\ncache /c lots\n}", `storage s3: cache size "lots"`},
		{"storage s3 {\nbucket b\ncache /c 0\n}", `storage s3: cache size "0"`},
		{"storage s3 {\nbucket b\ncache /c 1GiB\nredirect\n}", "storage s3: redirect and cache exclude each other"},
		{"metadata mysql dsn", "want `metadata postgres <dsn>`"},
		{"metadata postgres", "want `metadata postgres <dsn>`"},
	} {
		var r Registry
		err := r.UnmarshalCaddyfile(caddyfile.NewTestDispenser("oci_registry {\n" + tc.input + "\n}"))
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%q: error %v, want one containing %q", tc.input, err, tc.wantErr)
		}
	}
	// A folder named s3 is still a folder.
	var r Registry
	if err := r.UnmarshalCaddyfile(caddyfile.NewTestDispenser("oci_registry {\nstorage s3\n}")); err != nil || r.Storage != "s3" || r.StorageS3 != nil {
		t.Errorf("storage s3 without a block: %+v, %v", r, err)
	}
}

// TestUnmarshalSharedStorage: `storage <dir> { shared }` is the folder
// and the opt-in, in JSON as storage_shared; the block knows nothing else.
func TestUnmarshalSharedStorage(t *testing.T) {
	var r Registry
	err := r.UnmarshalCaddyfile(caddyfile.NewTestDispenser("oci_registry {\nstorage /mnt/registry {\nshared\n}\nmetadata postgres {env.DATABASE_URL}\n}"))
	if err != nil {
		t.Fatal(err)
	}
	want := Registry{Storage: "/mnt/registry", StorageShared: true, MetadataPostgres: "{env.DATABASE_URL}"}
	if !reflect.DeepEqual(r, want) {
		t.Errorf("got %+v, want %+v", r, want)
	}
	if b, err := json.Marshal(r); err != nil || !strings.Contains(string(b), `"storage":"/mnt/registry","storage_shared":true`) {
		t.Errorf("JSON %s (%v)", b, err)
	}
	for _, tc := range []struct{ input, wantErr string }{
		{"storage /srv {\nshared yes\n}", "storage /srv: shared takes no argument"},
		{"storage /srv {\nreadonly\n}", `storage /srv: unrecognized subdirective "readonly" (known: shared)`},
	} {
		var r Registry
		err := r.UnmarshalCaddyfile(caddyfile.NewTestDispenser("oci_registry {\n" + tc.input + "\n}"))
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%q: error %v, want one containing %q", tc.input, err, tc.wantErr)
		}
	}
}

// TestUnmarshalS3Reads: redirect (with and without an expiry) and cache
// parse into their JSON fields, and survive a JSON round trip flat
// beside the bucket's fields.
func TestUnmarshalS3Reads(t *testing.T) {
	for _, tc := range []struct {
		input string
		want  S3Storage
		json  string
	}{
		{"redirect", S3Storage{Redirect: true}, `"redirect":true`},
		{"redirect 90s", S3Storage{Redirect: true, RedirectExpiry: caddy.Duration(90 * time.Second)}, `"redirect_expiry":90000000000`},
		{"cache /var/cache/oci 50GiB", S3Storage{CacheDir: "/var/cache/oci", CacheSize: 50 << 30}, `"cache_dir":"/var/cache/oci","cache_size":53687091200`},
	} {
		var r Registry
		if err := r.UnmarshalCaddyfile(caddyfile.NewTestDispenser("oci_registry {\nstorage s3 {\nbucket b\n" + tc.input + "\n}\n}")); err != nil {
			t.Fatalf("%q: %v", tc.input, err)
		}
		tc.want.Bucket = "b"
		if !reflect.DeepEqual(*r.StorageS3, tc.want) {
			t.Errorf("%q: got %+v, want %+v", tc.input, *r.StorageS3, tc.want)
		}
		b, err := json.Marshal(r.StorageS3)
		if err != nil || !strings.Contains(string(b), `"bucket":"b"`) || !strings.Contains(string(b), tc.json) {
			t.Errorf("%q: JSON %s (%v), want the bucket and %s", tc.input, b, err, tc.json)
		}
		var back S3Storage
		if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, tc.want) {
			t.Errorf("%q: JSON round trip %+v (%v)", tc.input, back, err)
		}
	}
}

func TestValidateScaleOut(t *testing.T) {
	s3cfg := &S3Storage{Config: s3.Config{Bucket: "b"}}
	for _, tc := range []struct {
		name    string
		rg      Registry
		wantErr string
	}{
		{"postgres without s3", Registry{MetadataPostgres: "dsn"}, "add `storage s3"},
		{"postgres and a folder not said shared", Registry{MetadataPostgres: "dsn", Storage: "/srv"}, "`storage <dir> { shared }`"},
		{"s3 without postgres or metadata_dir", Registry{StorageS3: s3cfg}, "add `metadata_dir <folder>`"},
		{"shared without postgres", Registry{Storage: "/srv", StorageShared: true}, "storage /srv { shared } needs `metadata postgres <dsn>`"},
		{"shared without a folder", Registry{StorageShared: true, MetadataPostgres: "dsn"}, "storage_shared needs the folder"},
		{"shared with s3", Registry{StorageShared: true, StorageS3: s3cfg, MetadataPostgres: "dsn"}, "storage_shared is for a folder"},
		{"shared folder and metadata_dir", Registry{Storage: "/srv", StorageShared: true, MetadataPostgres: "dsn", MetadataDir: "/m"}, "metadata_dir"},
		{"shared folder and a reserve", Registry{Storage: "/srv", StorageShared: true, MetadataPostgres: "dsn", StorageReserve: 1}, "storage_reserve"},
		{"s3 with the embedded metadata and a reserve", Registry{StorageS3: s3cfg, MetadataDir: "/m", StorageReservePercent: 5}, "storage_reserve"},
		{"s3 and a folder", Registry{StorageS3: s3cfg, MetadataPostgres: "dsn", Storage: "/srv"}, "exclusive"},
		{"s3 and a reserve", Registry{StorageS3: s3cfg, MetadataPostgres: "dsn", StorageReserve: 1}, "storage_reserve"},
		{"s3 and metadata_dir", Registry{StorageS3: s3cfg, MetadataPostgres: "dsn", MetadataDir: "/m"}, "metadata_dir"},
		{"redirect and cache (JSON)", Registry{StorageS3: &S3Storage{Config: s3cfg.Config, Redirect: true, CacheDir: "/c", CacheSize: 1}, MetadataPostgres: "dsn"}, "storage s3: redirect and cache exclude each other"},
		{"cache without a size (JSON)", Registry{StorageS3: &S3Storage{Config: s3cfg.Config, CacheDir: "/c"}, MetadataPostgres: "dsn"}, "storage s3: cache needs both"},
		{"expiry without redirect (JSON)", Registry{StorageS3: &S3Storage{Config: s3cfg.Config, RedirectExpiry: caddy.Duration(time.Minute)}, MetadataPostgres: "dsn"}, "storage s3: redirect_expiry needs redirect"},
	} {
		if err := tc.rg.validateScaleOut(); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.wantErr)
		}
	}
	for name, ok := range map[string]Registry{
		"s3 + postgres":            {StorageS3: s3cfg, MetadataPostgres: "dsn"},
		"s3 + metadata_dir":        {StorageS3: s3cfg, MetadataDir: "/m"},
		"shared folder + postgres": {Storage: "/srv", StorageShared: true, MetadataPostgres: "dsn"},
		"folder":                   {Storage: "/srv"},
	} {
		if err := ok.validateScaleOut(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		// Counted in the metadata, across replicas (cache/composite:
		// evict.go, uploads.go).
		ok.MirrorCacheSize, ok.MaxUploadBytes, ok.MaxUploadBytesPerClient = 1<<30, 1<<30, 1<<28
		if err := ok.validateScaleOut(); err != nil {
			t.Errorf("%s with mirror_cache_size and upload byte limits: %v", name, err)
		}
	}
}

// Caddy runs the registry on S3 (versitygw) and PostgreSQL: an image
// pushed is pulled back byte for byte, and is still there after a reload
// (a new config on the same bucket and database).
func TestScaleOutServes(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	pg := pgtest.Start(t)
	dsn := pg.NewDatabase(t)
	t.Setenv("TEST_S3_SECRET", srv.SecretKey)
	t.Setenv("TEST_DATABASE_URL", dsn)
	addr := freeAddr(t)
	cfg := adaptFront(t, "{\n\tadmin off\n\tlog {\n\t\tlevel ERROR\n\t}\n}\nhttp://"+addr+` {
	oci_registry {
		storage s3 {
			bucket `+bucket+`
			endpoint `+srv.Endpoint+`
			region `+srv.Region+`
			prefix reg/
			access_key `+srv.AccessKey+`
			secret_key {env.TEST_S3_SECRET}
			path_style
		}
		metadata postgres {env.TEST_DATABASE_URL}
	}
}
`)
	if strings.Contains(cfg, srv.SecretKey) || strings.Contains(cfg, dsn) {
		t.Fatal("the adapted config holds the secrets instead of their placeholders")
	}
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}
	defer func() { stopCaddy(t) }()

	img, err := random.Image(3<<20, 3)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(addr+"/team/app:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	check := func(when string) {
		t.Helper()
		got, err := remote.Image(ref)
		if err != nil {
			t.Fatalf("%s: pull: %v", when, err)
		}
		if d, _ := got.Digest(); d != want {
			t.Fatalf("%s: pulled %s, pushed %s", when, d, want)
		}
		layers, err := got.Layers()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range layers {
			// Verify every byte of every layer against its digest.
			rc, err := l.Compressed()
			if err != nil {
				t.Fatalf("%s: layer: %v", when, err)
			}
			if _, err := io.Copy(io.Discard, rc); err != nil {
				t.Fatalf("%s: layer bytes: %v", when, err)
			}
			if err := rc.Close(); err != nil {
				t.Fatalf("%s: layer verification: %v", when, err)
			}
		}
	}
	check("after the push")

	// The objects are in the bucket under the prefix, nothing half-done.
	objects, uploads := srv.Keys(t, bucket, "reg/")
	if len(objects) < 4 || len(uploads) != 0 {
		t.Errorf("bucket after the push: %d objects, %d multipart uploads in progress", len(objects), len(uploads))
	}

	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}
	check("after a reload")
	resp, err := http.Get("http://" + addr + "/v2/_catalog")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"team/app"`) {
		t.Errorf("catalog: %s %s", resp.Status, body)
	}
}

// With PostgreSQL down, the server starts all the same and answers 503
// UNAVAILABLE with Retry-After; once PostgreSQL is up it serves without a
// restart. PostgreSQL killed while serving: 503 again, and back by itself.
func TestScaleOutDatabaseDown(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	pg := pgtest.Start(t)
	dsn := pg.NewDatabase(t)
	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pg.Start() })
	addr := freeAddr(t)
	cfg := adaptFront(t, "{\n\tadmin off\n\tlog {\n\t\tlevel ERROR\n\t}\n}\nhttp://"+addr+` {
	oci_registry {
		storage s3 {
			bucket `+bucket+`
			endpoint `+srv.Endpoint+`
			region `+srv.Region+`
			access_key `+srv.AccessKey+`
			secret_key `+srv.SecretKey+`
			path_style
		}
		metadata postgres "`+dsn+`"
	}
}
`)
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatalf("the server must start with PostgreSQL down: %v", err)
	}
	defer func() { stopCaddy(t) }()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	unavailable := func(when, method, path string) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://"+addr+path, nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), `"UNAVAILABLE"`) ||
			resp.Header.Get("Retry-After") == "" {
			t.Errorf("%s: %s %s %q (Retry-After %q), want 503 UNAVAILABLE with Retry-After",
				when, method, resp.Status, body, resp.Header.Get("Retry-After"))
		}
	}
	unavailable("PostgreSQL down at start", "GET", "/v2/")

	push := func(tag string) {
		t.Helper()
		img, err := random.Image(1024, 1)
		if err != nil {
			t.Fatal(err)
		}
		ref, _ := name.ParseReference(addr+"/team/app:"+tag, name.Insecure)
		deadline := time.Now().Add(30 * time.Second)
		for {
			err := remote.Write(ref, img)
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("push %s once PostgreSQL is back: %v", tag, err)
			}
			time.Sleep(300 * time.Millisecond)
		}
	}
	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
	push("v1")

	if err := pg.Kill(); err != nil {
		t.Fatal(err)
	}
	unavailable("PostgreSQL killed", "POST", "/v2/team/app/blobs/uploads/")
	unavailable("PostgreSQL killed", "GET", "/v2/team/app/tags/list")
	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
	push("v2")
}

// Settings that cannot work are config errors at load, naming the
// directive, not a 503 at every request.
func TestScaleOutConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name, json, wantErr string
	}{
		{"no bucket", `{"storage_s3": {}, "metadata_postgres": "postgres://u@127.0.0.1:1/db"}`, "storage s3"},
		{"small part size", `{"storage_s3": {"bucket": "registry", "part_size": 1048576}, "metadata_postgres": "postgres://u@127.0.0.1:1/db"}`, "part_size"},
		{"bad DSN", `{"storage_s3": {"bucket": "registry"}, "metadata_postgres": "postgres://u:secret@[::1"}`, "metadata postgres: the DSN does not parse"},
	} {
		addr := freeAddr(t)
		cfg := `{"admin": {"disabled": true}, "apps": {"http": {"servers": {"s": {"listen": ["` + addr + `"],
			"routes": [{"handle": [{"handler": "oci_registry", ` + strings.TrimSuffix(strings.TrimPrefix(tc.json, "{"), "}") + `}]}]}}}}}`
		err := caddy.Load([]byte(cfg), true)
		stopCaddy(t)
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) || strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: %v, want an error containing %q (and no password)", tc.name, err, tc.wantErr)
		}
	}
}
