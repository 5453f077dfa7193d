package caddymodule

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// The two combinations beside S3+PostgreSQL: S3 with the embedded
// metadata (one node) and a shared folder with PostgreSQL.

// pushAndCheck pushes an image to addr and returns a check that pulls it
// back by tag and verifies every layer's bytes against its digest.
func pushAndCheck(t *testing.T, addr string) (v1.Hash, func(when string)) {
	t.Helper()
	img, err := random.Image(2<<20, 2)
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
	return want, func(when string) {
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
}

// S3 with metadata_dir: an image pushed is pulled back, blobs are in the
// bucket and the metadata in the folder, and a reload (the new config
// opens while the old serves) shares the open database instead of
// failing on badger's lock of the folder.
func TestS3EmbeddedServes(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	meta := filepath.Join(t.TempDir(), "meta")
	addr := freeAddr(t)
	cfg := adaptFront(t, "{\n\tadmin off\n\tlog {\n\t\tlevel ERROR\n\t}\n}\nhttp://"+addr+` {
	oci_registry {
		storage s3 {
			bucket `+bucket+`
			endpoint `+srv.Endpoint+`
			region `+srv.Region+`
			prefix reg/
			access_key `+srv.AccessKey+`
			secret_key `+srv.SecretKey+`
			path_style
		}
		metadata_dir `+meta+`
	}
}
`)
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}
	defer func() { stopCaddy(t) }()
	_, check := pushAndCheck(t, addr)
	check("after the push")

	objects, uploads := srv.Keys(t, bucket, "reg/")
	if len(objects) < 3 || len(uploads) != 0 {
		t.Errorf("bucket after the push: %d objects, %d multipart uploads in progress", len(objects), len(uploads))
	}
	if entries, err := os.ReadDir(meta); err != nil || len(entries) == 0 {
		t.Errorf("metadata_dir after the push: %d entries, %v", len(entries), err)
	}

	for i := range 2 {
		if err := caddy.Load([]byte(cfg), true); err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
		check("after a reload")
	}
	resp, err := http.Get("http://" + addr + "/v2/_catalog")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"team/app"`) {
		t.Errorf("catalog: %s %s", resp.Status, body)
	}

	// Stopped and started again (a restart within the process): the
	// metadata was closed and is read back from the folder.
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}
	check("after a stop and start")
}

// A shared folder with PostgreSQL: two handlers (as two replicas would)
// on one folder and one database, each with its own pool; an image
// pushed through one is pulled through the other.
func TestSharedFolderServes(t *testing.T) {
	dsn := pgtest.Start(t).NewDatabase(t)
	dir := t.TempDir()
	a, b := freeAddr(t), freeAddr(t)
	site := func(addr, gc string) string {
		return "http://" + addr + ` {
	oci_registry {
		storage ` + dir + ` {
			shared
		}
		metadata postgres "` + dsn + `"
		gc_grace ` + gc + `
	}
}
`
	}
	// Different gc_grace: two clusters, as two processes would have.
	cfg := adaptFront(t, "{\n\tadmin off\n\tlog {\n\t\tlevel ERROR\n\t}\n}\n"+site(a, "1h")+site(b, "2h"))
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}
	defer func() { stopCaddy(t) }()
	want, _ := pushAndCheck(t, a)
	ref, _ := name.ParseReference(b+"/team/app:v1", name.Insecure)
	got, err := remote.Image(ref)
	if err != nil {
		t.Fatalf("pull through the other: %v", err)
	}
	if d, _ := got.Digest(); d != want {
		t.Fatalf("pulled %s through the other, pushed %s", d, want)
	}
	layers, _ := got.Layers()
	for _, l := range layers {
		d, _ := l.Digest()
		if _, err := os.Stat(filepath.Join(dir, "blobs", d.Algorithm, d.Hex[:2], d.Hex)); err != nil {
			t.Errorf("layer %s is not in the shared folder: %v", d, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "meta")); !os.IsNotExist(err) {
		t.Errorf("an embedded database in the shared folder: %v", err)
	}
}

// A reload of S3 with metadata_dir that changes settings keeps the open
// database (badger opens a folder once per process) and warns, naming
// each changed setting; the bucket's settings by name only, as they may
// hold a secret.
func TestS3EmbeddedReloadWarns(t *testing.T) {
	meta, logFile, addr := t.TempDir(), filepath.Join(t.TempDir(), "log.json"), freeAddr(t)
	load := func(prefix string, extra map[string]any) {
		t.Helper()
		handler := map[string]any{"handler": "oci_registry", "metadata_dir": meta,
			"storage_s3": map[string]any{"bucket": "bucket", "endpoint": "http://127.0.0.1:1", "prefix": prefix, "access_key": "key", "secret_key": "hush"}}
		for k, v := range extra {
			handler[k] = v
		}
		cfg, _ := json.Marshal(map[string]any{
			"admin": map[string]any{"disabled": true},
			"logging": map[string]any{"logs": map[string]any{"default": map[string]any{
				"level": "WARN", "writer": map[string]any{"output": "file", "filename": logFile},
			}}},
			"apps": map[string]any{"http": map[string]any{"servers": map[string]any{"registry": map[string]any{
				"listen": []string{addr},
				"routes": []any{map[string]any{"handle": []any{handler}}},
			}}}},
		})
		if err := caddy.Load(cfg, true); err != nil {
			t.Fatal(err)
		}
	}
	load("a/", nil)
	t.Cleanup(func() { stopCaddy(t) })
	ping(t, addr)
	load("b/", map[string]any{"gc_grace": "2h"})
	ping(t, addr)

	b, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	var found string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "storage already open with other settings") {
			found = line
		}
	}
	if found == "" {
		t.Fatalf("no warning about the storage's settings in the log:\n%s", b)
	}
	for _, want := range []string{"storage s3", "gc_grace: 1h0m0s -> 2h0m0s"} {
		if !strings.Contains(found, want) {
			t.Errorf("warning lacks %q:\n%s", want, found)
		}
	}
	for _, not := range []string{"hush", "upload_ttl", "gc_interval"} {
		if strings.Contains(found, not) {
			t.Errorf("warning names %s:\n%s", not, found)
		}
	}
}

// A metadata_dir (S3, one node) or a shared folder that is a file is a
// config error at validation, naming the directive, not a failure at
// the first request.
func TestValidateCombosFolders(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s3cfg := &S3Storage{Config: s3.Config{Bucket: "bucket"}}
	for _, tc := range []struct {
		name, wantErr string
		rg            Registry
	}{
		{"metadata_dir", "metadata_dir " + file + " exists and is not a directory", Registry{StorageS3: s3cfg, MetadataDir: file}},
		{"shared folder", "storage " + file + " exists and is not a directory", Registry{Storage: file, StorageShared: true, MetadataPostgres: "dsn"}},
	} {
		if err := tc.rg.Validate(); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.wantErr)
		}
	}
}
