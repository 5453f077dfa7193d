package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// TestMigrateBinary follows the README's "Migrating a folder to S3,
// PostgreSQL or both" (flags, S3 + PostgreSQL) with the built binary: a
// server on the example config takes pushes; `caddy oci migrate` refuses its folder while it runs, copies it
// once it is stopped, and copies nothing the second time; two replicas on
// the bucket and database serve every image byte for byte, by tag and by
// digest.
func TestMigrateBinary(t *testing.T) {
	needBinary(t)
	dataDir := t.TempDir()
	s := newServer(t, dataDir)
	img, _ := random.Image(1<<20, 3)
	idx, _ := random.Index(4096, 2, 2)
	refs := map[string]v1.Image{"app:v1": img, "app:latest": img}
	for ref, im := range refs {
		if err := remote.Write(mustParse(t, s.addr+"/"+ref), im); err != nil {
			t.Fatalf("push %s: %v", ref, err)
		}
	}
	if err := remote.WriteIndex(mustParse(t, s.addr+"/multi:1"), idx); err != nil {
		t.Fatalf("push index: %v", err)
	}

	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	pg := pgtest.Start(t)
	dsn := pg.NewDatabase(t)
	env := []string{"S3_ACCESS_KEY=" + srv.AccessKey, "S3_SECRET_KEY=" + srv.SecretKey, "DATABASE_URL=" + dsn}
	args := []string{"oci", "migrate", "--from", dataDir, "--s3-bucket", bucket, "--s3-endpoint", srv.Endpoint,
		"--s3-region", srv.Region, "--s3-prefix", "registry/", "--s3-path-style"}
	migrate := func() (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, caddyBin, args...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	if out, err := migrate(); err == nil || !strings.Contains(out, "stop the server") {
		t.Fatalf("migrate of a folder in use: %v\n%s", err, out)
	}
	if err := s.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	<-s.done
	out, err := migrate()
	t.Logf("first run:\n%s", out)
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if strings.Contains(out, srv.SecretKey) || strings.Contains(out, dsn) {
		t.Fatal("the output shows a secret")
	}
	out, err = migrate()
	t.Logf("second run:\n%s", out)
	if err != nil || !strings.Contains(out, "copied: 0 blobs (0 bytes), 0 blob links, 0 manifests, 0 tags,") {
		t.Fatalf("second run copied something: %v", err)
	}

	t.Setenv("CADDY_OCI_TEST_S3_KEY", srv.AccessKey)
	t.Setenv("CADDY_OCI_TEST_S3_SECRET", srv.SecretKey)
	t.Setenv("CADDY_OCI_TEST_DATABASE_URL", dsn)
	for i := range 2 {
		r := siteServer(t, "", replicaSite(srv, bucket, "", ""), 0)
		for ref, want := range refs {
			wd, _ := want.Digest()
			for _, pull := range []string{ref, "app@" + wd.String()} {
				got, err := remote.Image(mustParse(t, r.addr+"/"+pull))
				if err != nil {
					t.Fatalf("replica %d: pull %s: %v", i, pull, err)
				}
				sameBytes(t, pull, got, want)
			}
		}
		got, err := remote.Index(mustParse(t, r.addr+"/multi:1"))
		if err != nil {
			t.Fatalf("replica %d: pull index: %v", i, err)
		}
		gb, _ := got.RawManifest()
		wb, _ := idx.RawManifest()
		if !bytes.Equal(gb, wb) {
			t.Fatalf("replica %d: index bytes differ", i)
		}
		im, _ := idx.IndexManifest()
		for _, m := range im.Manifests {
			gi, err := got.Image(m.Digest)
			if err != nil {
				t.Fatalf("replica %d: child %s: %v", i, m.Digest, err)
			}
			wi, _ := idx.Image(m.Digest)
			sameBytes(t, "child "+m.Digest.String(), gi, wi)
		}
	}
}

func mustParse(t *testing.T, ref string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// sameBytes compares manifest, config and layers byte for byte; the
// layers' readers also verify their digests as they close.
func sameBytes(t *testing.T, what string, got, want v1.Image) {
	t.Helper()
	gb, err := got.RawManifest()
	wb, _ := want.RawManifest()
	if err != nil || !bytes.Equal(gb, wb) {
		t.Fatalf("%s: manifest differs (%v)", what, err)
	}
	gc, err := got.RawConfigFile()
	wc, _ := want.RawConfigFile()
	if err != nil || !bytes.Equal(gc, wc) {
		t.Fatalf("%s: config differs (%v)", what, err)
	}
	ls, _ := want.Layers()
	for _, wl := range ls {
		d, _ := wl.Digest()
		gl, err := got.LayerByDigest(d)
		if err != nil {
			t.Fatalf("%s: layer %s: %v", what, d, err)
		}
		var a, b bytes.Buffer
		for _, x := range []struct {
			l   v1.Layer
			buf *bytes.Buffer
		}{{gl, &a}, {wl, &b}} {
			rc, err := x.l.Compressed()
			if err != nil {
				t.Fatalf("%s: layer %s: %v", what, d, err)
			}
			if _, err := x.buf.ReadFrom(rc); err != nil {
				t.Fatalf("%s: layer %s: %v", what, d, err)
			}
			if err := rc.Close(); err != nil {
				t.Fatalf("%s: layer %s does not verify: %v", what, d, err)
			}
		}
		if !bytes.Equal(a.Bytes(), b.Bytes()) {
			t.Fatalf("%s: layer %s bytes differ", what, d)
		}
	}
}

// TestMigrateBinaryToS3Embedded follows the README's migration into the
// one-node setup on object storage (`storage s3` + `metadata_dir`), the
// destination read from the config the new server then runs: a server
// on the example config takes pushes and stops; `caddy oci migrate
// --config` copies its folder into versitygw and a new metadata_dir; the
// new server on that config serves every image, which crane validates
// (every layer downloaded and its digest checked) and the Go client
// compares byte for byte; while it runs, a migration into its
// metadata_dir is refused.
func TestMigrateBinaryToS3Embedded(t *testing.T) {
	needBinary(t)
	crane := tool(t, "crane")
	dataDir := t.TempDir()
	s := newServer(t, dataDir)
	img, _ := random.Image(1<<20, 3)
	idx, _ := random.Index(4096, 2, 2)
	refs := map[string]v1.Image{"app:v1": img, "team/tool:1.0": img}
	for ref, im := range refs {
		if err := remote.Write(mustParse(t, s.addr+"/"+ref), im); err != nil {
			t.Fatalf("push %s: %v", ref, err)
		}
	}
	if err := remote.WriteIndex(mustParse(t, s.addr+"/multi:1"), idx); err != nil {
		t.Fatalf("push index: %v", err)
	}
	if err := s.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	<-s.done

	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	metaDir := filepath.Join(t.TempDir(), "meta")
	port, adminPort := strconv.Itoa(freePort(t)), strconv.Itoa(freePort(t))
	cfg := "{\n\tadmin localhost:" + adminPort + "\n\tauto_https off\n}\n\nhttp://:" + port + ` {
	bind 127.0.0.1
	oci_registry {
		storage s3 {
			bucket ` + bucket + `
			endpoint ` + srv.Endpoint + `
			region ` + srv.Region + `
			prefix registry/
			access_key {env.S3_ACCESS_KEY}
			secret_key {env.S3_SECRET_KEY}
			path_style
		}
		metadata_dir ` + metaDir + `
	}
}
`
	config := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"S3_ACCESS_KEY=" + srv.AccessKey, "S3_SECRET_KEY=" + srv.SecretKey}
	migrate := func() (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, caddyBin, "oci", "migrate", "--from", dataDir, "--config", config)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := migrate()
	t.Logf("migrate:\n%s", out)
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if !strings.Contains(out, "and the embedded metadata in "+metaDir) || !strings.Contains(out, "verified: ") || strings.Contains(out, srv.SecretKey) {
		t.Fatalf("the summary does not name the destination or what it verified, or shows the secret")
	}

	r := &server{t: t, config: config, addr: "127.0.0.1:" + port, admin: "localhost:" + adminPort, env: env}
	r.start()
	if out, err := migrate(); err == nil || !strings.Contains(out, "in use: stop the server") {
		t.Fatalf("migrate into the metadata_dir of a running server: %v\n%s", err, out)
	}
	for ref, want := range refs {
		wd, _ := want.Digest()
		repo, _, _ := strings.Cut(ref, ":")
		for _, pull := range []string{ref, repo + "@" + wd.String()} {
			run(t, nil, crane, "validate", "--insecure", "--remote", r.addr+"/"+pull)
			if got := strings.TrimSpace(run(t, nil, crane, "digest", "--insecure", r.addr+"/"+pull)); got != wd.String() {
				t.Fatalf("crane digest %s = %s, want %s", pull, got, wd)
			}
			got, err := remote.Image(mustParse(t, r.addr+"/"+pull))
			if err != nil {
				t.Fatalf("pull %s: %v", pull, err)
			}
			sameBytes(t, pull, got, want)
		}
	}
	im, _ := idx.IndexManifest()
	for _, m := range im.Manifests {
		run(t, nil, crane, "validate", "--insecure", "--remote", r.addr+"/multi@"+m.Digest.String())
	}
	id, _ := idx.Digest()
	if got := strings.TrimSpace(run(t, nil, crane, "digest", "--insecure", r.addr+"/multi:1")); got != id.String() {
		t.Fatalf("crane digest multi:1 = %s, want %s", got, id)
	}
}
