package e2e

// The storage combinations beside S3+PostgreSQL replicas (replicas_test):
// one node on S3 with the embedded metadata (`storage s3` + metadata_dir),
// replicas on a shared folder with PostgreSQL (`storage <dir> { shared }`),
// and a zot config on S3 adapted to the first.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// s3EmbeddedSite is the oci_registry block of one node with its blobs in
// the bucket and its metadata in the embedded database in metaDir,
// secrets from the environment (s3Env).
func s3EmbeddedSite(srv *s3test.Server, bucket, metaDir, extra string) string {
	return `	oci_registry {
` + extra + `
		storage s3 {
			bucket ` + bucket + `
			endpoint ` + srv.Endpoint + `
			region ` + srv.Region + `
			prefix registry/
			access_key {env.CADDY_OCI_TEST_S3_KEY}
			secret_key {env.CADDY_OCI_TEST_S3_SECRET}
			path_style
		}
		metadata_dir ` + metaDir + `
	}`
}

// s3Bucket starts versitygw with a bucket and puts its keys where
// s3EmbeddedSite reads them.
func s3Bucket(t *testing.T) (*s3test.Server, string) {
	t.Helper()
	needBinary(t)
	srv := s3test.Start(t)
	t.Setenv("CADDY_OCI_TEST_S3_KEY", srv.AccessKey)
	t.Setenv("CADDY_OCI_TEST_S3_SECRET", srv.SecretKey)
	return srv, srv.Bucket(t)
}

// TestConformanceS3Embedded runs the whole conformance suite against one
// node on S3 (versitygw) with the embedded metadata.
func TestConformanceS3Embedded(t *testing.T) {
	bin := conformanceBin(t)
	srv, bucket := s3Bucket(t)
	s := siteServer(t, "", s3EmbeddedSite(srv, bucket, filepath.Join(t.TempDir(), "meta"), "\t\tsparse_manifests\n"), 0)
	runConformance(t, bin, s.addr, "conformance-s3-embedded.txt")
}

// TestS3EmbeddedRestart: an image pushed to one node on S3 with the
// embedded metadata is all there after the process is killed and started
// again (pulled by tag and by digest, every blob checked); and while it
// runs, a second process on the same metadata_dir refuses to start,
// saying why, instead of sharing the database.
func TestS3EmbeddedRestart(t *testing.T) {
	crane := tool(t, "crane")
	srv, bucket := s3Bucket(t)
	meta := filepath.Join(t.TempDir(), "meta")
	site := s3EmbeddedSite(srv, bucket, meta, "")
	s := siteServer(t, "", site, 0)

	img := ociImage(t)
	want, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	run(t, nil, crane, "push", "--insecure", writeLayout(t, img), s.addr+"/team/app:v1")

	out := caddyMustFail(t, site)
	if !strings.Contains(out, "metadata_dir "+meta) || !strings.Contains(out, "Another process is using this Badger database") {
		t.Errorf("a second process on the same metadata_dir: want an error naming it and its lock, got:\n%s", out)
	}

	s.kill()
	s.start()
	for _, ref := range []string{s.addr + "/team/app:v1", s.addr + "/team/app@" + want.String()} {
		dir := filepath.Join(t.TempDir(), "layout")
		run(t, nil, crane, "pull", "--insecure", "--format", "oci", ref, dir)
		if got := layoutDigest(t, dir); got != want.String() {
			t.Errorf("after the restart, %s pulled %s, want %s", ref, got, want)
		}
		checkLayout(t, dir, img)
	}
	if got := strings.TrimSpace(run(t, nil, crane, "ls", "--insecure", s.addr+"/team/app")); got != "v1" {
		t.Errorf("tags after the restart: %q, want v1", got)
	}
}

// caddyMustFail runs caddy on a Caddyfile with site on a free port and
// returns its output once it exits; it must exit, with an error, within
// a minute.
func caddyMustFail(t *testing.T, site string) string {
	t.Helper()
	port, adminPort := strconv.Itoa(freePort(t)), strconv.Itoa(freePort(t))
	cfg := "{\n\tadmin localhost:" + adminPort + "\n\tauto_https off\n}\n\nhttp://:" + port + " {\n\tbind 127.0.0.1\n" + site + "\n}\n"
	config := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, caddyBin, "run", "--config", config, "--adapter", "caddyfile").CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("caddy still ran after a minute:\n%s", out)
	}
	if err == nil {
		t.Fatalf("caddy exited without an error:\n%s", out)
	}
	return string(out)
}

// sharedFolderReplicas starts n replicas whose blobs are in one folder
// (as a network folder every replica mounts would be) and whose
// metadata is one PostgreSQL database.
func sharedFolderReplicas(t *testing.T, n int) (dir string, replicas []*server) {
	t.Helper()
	needBinary(t)
	pg := pgtest.Start(t)
	t.Setenv("CADDY_OCI_TEST_DATABASE_URL", pg.NewDatabase(t))
	dir = t.TempDir()
	for range n {
		replicas = append(replicas, siteServer(t, dir, `	oci_registry {
		storage `+dir+` {
			shared
		}
		metadata postgres {env.CADDY_OCI_TEST_DATABASE_URL}
	}`, 0))
	}
	return dir, replicas
}

// TestSharedFolderReplicas: two processes on one folder and one
// PostgreSQL. An image pushed through one is pulled through the other;
// a chunked upload whose requests alternate between them completes, and
// the blob reads back whole from either.
func TestSharedFolderReplicas(t *testing.T) {
	crane := tool(t, "crane")
	dir, rs := sharedFolderReplicas(t, 2)
	a, b := rs[0], rs[1]

	img := ociImage(t)
	want, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	run(t, nil, crane, "push", "--insecure", writeLayout(t, img), a.addr+"/team/app:v1")
	pulled := filepath.Join(t.TempDir(), "layout")
	run(t, nil, crane, "pull", "--insecure", "--format", "oci", b.addr+"/team/app:v1", pulled)
	if got := layoutDigest(t, pulled); got != want.String() {
		t.Errorf("pulled %s through the other replica, pushed %s", got, want)
	}
	checkLayout(t, pulled, img)

	// POST on a, PATCHes alternating b, a, b, the closing PUT on a.
	const repo = "team/chunked"
	chunk := 1 << 20
	data := randomBytes(t, 3*chunk+123)
	sum := sha256.Sum256(data)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	resp := do(t, http.MethodPost, a.url("/v2/"+repo+"/blobs/uploads/"), nil, nil)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST upload on a: %s", resp.Status)
	}
	loc := resp.Header.Get("Location")
	for i, off := 0, 0; off < len(data); i++ {
		on := []*server{b, a}[i%2]
		end := min(off+chunk, len(data))
		resp = do(t, http.MethodPatch, on.url(uploadPath(t, loc)), data[off:end],
			map[string]string{"Content-Type": "application/octet-stream", "Content-Range": fmt.Sprintf("%d-%d", off, end-1)})
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("PATCH %d on %s: %s %s", i, on.addr, resp.Status, readAll(t, resp))
		}
		loc, off = resp.Header.Get("Location"), end
	}
	headBlob(t, b, repo, digest, http.StatusNotFound, "before the commit")
	path := uploadPath(t, loc)
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	resp = do(t, http.MethodPut, a.url(path+sep+"digest="+digest), nil, nil)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT commit on a: %s %s", resp.Status, readAll(t, resp))
	}
	for _, s := range []*server{a, b} {
		resp := do(t, http.MethodGet, s.url("/v2/"+repo+"/blobs/"+digest), nil, nil)
		if resp.StatusCode != http.StatusOK || !bytes.Equal(readAll(t, resp), data) {
			t.Errorf("GET the chunked blob from %s: %s, or other bytes", s.addr, resp.Status)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "blobs", "sha256", hex.EncodeToString(sum[:1]), hex.EncodeToString(sum[:]))); err != nil {
		t.Errorf("the chunked blob is not in the shared folder: %v", err)
	}
}

// TestZotS3Adapted runs a zot config on S3 (versitygw) without
// remoteCache through the zot adapter: one node, blobs in the bucket,
// metadata in the embedded database under zot's rootDirectory. crane
// pushes and pulls back; the blobs are in the bucket under zot's
// rootdirectory prefix.
func TestZotS3Adapted(t *testing.T) {
	crane := tool(t, "crane")
	srv, bucket := s3Bucket(t)
	dir := t.TempDir()
	port := strconv.Itoa(freePort(t))
	b, err := os.ReadFile(filepath.Join(repoRoot, "caddymodule", "zotadapter", "testdata", "zot", "s3-local.json"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.NewReplacer("@DIR@", dir, "@PORT@", port, "@REGION@", srv.Region, "@ENDPOINT@", srv.Endpoint,
		"@BUCKET@", bucket, "@ACCESSKEY@", srv.AccessKey, "@SECRETKEY@", srv.SecretKey).Replace(string(b))
	config := filepath.Join(dir, "config.json")
	if err := os.WriteFile(config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	admin := "localhost:" + strconv.Itoa(freePort(t))
	s := &server{t: t, config: config, addr: "127.0.0.1:" + port, admin: admin, dataDir: dir,
		adapter: "zot", env: []string{"CADDY_ADMIN=" + admin}}
	s.start()

	img := ociImage(t)
	want, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	run(t, nil, crane, "push", "--insecure", writeLayout(t, img), s.addr+"/apps/web:1")
	pulled := filepath.Join(t.TempDir(), "layout")
	run(t, nil, crane, "pull", "--insecure", "--format", "oci", s.addr+"/apps/web@"+want.String(), pulled)
	if got := layoutDigest(t, pulled); got != want.String() {
		t.Errorf("pulled %s, pushed %s", got, want)
	}
	checkLayout(t, pulled, img)

	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	objects, _ := srv.Keys(t, bucket, "zot/")
	for _, l := range layers {
		d, _ := l.Digest()
		found := false
		for _, k := range objects {
			found = found || strings.HasSuffix(k, d.Hex)
		}
		if !found {
			t.Errorf("layer %s is not in the bucket under zot/ (objects: %v)", d, objects)
		}
	}
	if entries, err := os.ReadDir(filepath.Join(dir, "zot", "meta")); err != nil || len(entries) == 0 {
		t.Errorf("no embedded metadata under zot's rootDirectory: %d entries, %v", len(entries), err)
	}
}
