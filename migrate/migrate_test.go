package migrate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"go.uber.org/zap/zaptest"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/cache/composite"
	"github.com/caddy-oci/caddy-oci/pgmeta"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
	"github.com/caddy-oci/caddy-oci/registry"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// pushed is what a test pushed, to pull back and compare.
type pushed struct {
	images  map[string]v1.Image      // by reference (repo:tag or repo@digest)
	indexes map[string]v1.ImageIndex // by reference
	// referrer of app:v1's manifest
	referrer v1.Hash
	subject  v1.Hash
	fetched  time.Time // of mirror/library/alpine:3
	secret   []byte
}

// fillFolder pushes images through the registry's handler onto a
// single-node store in dir, with real HTTP, and adds the records a
// server also keeps (a mirrored tag's fetch time, an API key, a session).
func fillFolder(t *testing.T, dir string) pushed {
	t.Helper()
	st, err := cache.Open(cache.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(registry.New(registry.Config{Store: st}))
	host := strings.TrimPrefix(srv.URL, "http://")
	p := pushed{images: map[string]v1.Image{}, indexes: map[string]v1.ImageIndex{}}
	write := func(ref string, img v1.Image) {
		t.Helper()
		if err := remote.Write(mustRef(t, host+"/"+ref), img); err != nil {
			t.Fatalf("push %s: %v", ref, err)
		}
		p.images[ref] = img
	}
	img1, _ := random.Image(4096, 3)
	img2, _ := random.Image(2048, 2)
	write("app:v1", img1)
	write("app:latest", img1)
	write("app:v2", img2)
	write("team/tool:1.0", img2) // the same blobs in another repository
	// A referrer of app:v1, pushed by digest only: it comes with its
	// subject, through the referrers API.
	d1, _ := img1.Digest()
	m1, _ := img1.Manifest()
	sig, _ := random.Image(512, 1)
	sig = mutate.Subject(sig, v1.Descriptor{MediaType: m1.MediaType, Digest: d1, Size: mustSize(t, img1)}).(v1.Image)
	sd, _ := sig.Digest()
	write("app@"+sd.String(), sig)
	p.referrer, p.subject = sd, d1

	idx, _ := random.Index(1024, 2, 2)
	if err := remote.WriteIndex(mustRef(t, host+"/multi:1"), idx); err != nil {
		t.Fatalf("push index: %v", err)
	}
	p.indexes["multi:1"] = idx
	id, _ := idx.Digest()
	p.indexes["multi@"+id.String()] = idx

	alpine, _ := random.Image(1024, 1)
	write("mirror/library/alpine:3", alpine)
	srv.Close()

	ctx := context.Background()
	p.fetched = time.Now().Add(-time.Minute)
	if err := st.SetTagFetched(ctx, "mirror/library/alpine", "3", p.fetched); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateAPIKey("k1", []byte(`{"id":"k1","user":"ci"}`)); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateSession("s1", []byte(`{"user":"alice"}`), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if p.secret, err = st.AuthSecret("session", 32); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

func mustRef(t *testing.T, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func mustSize(t *testing.T, img v1.Image) int64 {
	t.Helper()
	n, err := img.Size()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// dest is a fresh bucket and database, as the command opens them.
type dest struct {
	s3  s3.Config
	dsn string
	srv *s3test.Server
}

func newDest(t *testing.T) dest {
	t.Helper()
	srv := s3test.Start(t)
	return dest{
		s3: s3.Config{Bucket: srv.Bucket(t), Endpoint: srv.Endpoint, Region: srv.Region,
			AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true, Prefix: "reg/"},
		dsn: pgtest.NewDatabase(t),
		srv: srv,
	}
}

// open returns the composite store on d and its database.
func (d dest) open(t *testing.T) (*composite.Store, *pgmeta.Store) {
	t.Helper()
	blobs, err := s3.New(context.Background(), d.s3, nil)
	if err != nil {
		t.Fatal(err)
	}
	meta, err := pgmeta.Open(context.Background(), pgmeta.Options{DSN: d.dsn})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(meta.Close)
	st, err := composite.New(composite.Options{Blobs: blobs, Meta: meta, Leases: meta.Leases()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st, meta
}

func migrate(t *testing.T, dir string, d dest) (Summary, error) {
	t.Helper()
	src, err := OpenSource(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, meta := d.open(t)
	return Run(context.Background(), src, dst, meta, Options{Verify: true, Progress: func(l string) { t.Log(l) }})
}

// TestMigrate: a folder filled through the registry is copied into
// versitygw and PostgreSQL; a registry serving those gives back every
// image byte for byte, by tag and by digest, with the referrer, the
// mirror's fetch time and the auth records; a second run copies nothing.
func TestMigrate(t *testing.T) {
	dir := t.TempDir()
	p := fillFolder(t, dir)
	d := newDest(t)

	sum, err := migrate(t, dir, d)
	t.Logf("first run:\n%s", sum)
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if sum.Blobs == 0 || sum.Manifests == 0 || sum.Tags != 6 || sum.TagFetches != 1 ||
		sum.APIKeys != 1 || sum.Sessions != 1 || sum.Secrets != 1 || sum.VerifiedBlobs != sum.Blobs {
		t.Fatalf("first run copied too little: %+v", sum)
	}

	dst, meta := d.open(t)
	srv := httptest.NewServer(registry.New(registry.Config{Store: dst, Logger: zaptest.NewLogger(t)}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	for ref, want := range p.images {
		got, err := remote.Image(mustRef(t, host+"/"+ref))
		if err != nil {
			t.Fatalf("pull %s: %v", ref, err)
		}
		sameImage(t, ref, got, want)
		dg, _ := want.Digest()
		repo, _, _ := strings.Cut(strings.Split(ref, "@")[0], ":")
		got, err = remote.Image(mustRef(t, host+"/"+repo+"@"+dg.String()))
		if err != nil {
			t.Fatalf("pull %s by digest: %v", ref, err)
		}
		sameImage(t, ref+" by digest", got, want)
	}
	for ref, want := range p.indexes {
		got, err := remote.Index(mustRef(t, host+"/"+ref))
		if err != nil {
			t.Fatalf("pull %s: %v", ref, err)
		}
		gb, _ := got.RawManifest()
		wb, _ := want.RawManifest()
		if !bytes.Equal(gb, wb) {
			t.Fatalf("%s: index bytes differ", ref)
		}
		im, _ := want.IndexManifest()
		for _, m := range im.Manifests {
			wi, _ := want.Image(m.Digest)
			gi, err := got.Image(m.Digest)
			if err != nil {
				t.Fatalf("%s child %s: %v", ref, m.Digest, err)
			}
			sameImage(t, ref+" child", gi, wi)
		}
	}
	refs, err := remote.Referrers(mustRef(t, host+"/app@"+p.subject.String()).Context().Digest(p.subject.String()))
	if err != nil {
		t.Fatalf("referrers: %v", err)
	}
	if rm, _ := refs.IndexManifest(); len(rm.Manifests) != 1 || rm.Manifests[0].Digest != p.referrer {
		t.Fatalf("referrers of app:v1 = %+v, want %s", rm, p.referrer)
	}

	ctx := context.Background()
	ti, err := dst.TagInfo(ctx, "mirror/library/alpine", "3")
	if diff := ti.Fetched.Sub(p.fetched).Abs(); err != nil || diff >= time.Microsecond {
		t.Fatalf("tag fetch time %v, %v; want %v", ti.Fetched, err, p.fetched)
	}
	if rec, err := meta.APIKey("k1"); err != nil || string(rec) != `{"id":"k1","user":"ci"}` {
		t.Fatalf("API key: %s, %v", rec, err)
	}
	if rec, err := meta.Session("s1"); err != nil || string(rec) != `{"user":"alice"}` {
		t.Fatalf("session: %s, %v", rec, err)
	}
	if key, err := meta.AuthSecret("session", 32); err != nil || !bytes.Equal(key, p.secret) {
		t.Fatalf("session key not the folder's: %v", err)
	}

	again, err := migrate(t, dir, d)
	t.Logf("second run:\n%s", again)
	if err != nil || again.Copied() != 0 || again.BlobsPresent != sum.Blobs || again.ManifestsPresent != sum.Manifests || again.TagsPresent != sum.Tags {
		t.Fatalf("second run: %v; copied %d things, want none: %+v", err, again.Copied(), again)
	}
}

// sameImage compares manifests, configs and layers byte for byte.
func sameImage(t *testing.T, what string, got, want v1.Image) {
	t.Helper()
	gb, err := got.RawManifest()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	wb, _ := want.RawManifest()
	if !bytes.Equal(gb, wb) {
		t.Fatalf("%s: manifest bytes differ", what)
	}
	gc, err := got.RawConfigFile()
	if err != nil {
		t.Fatalf("%s: config: %v", what, err)
	}
	wc, _ := want.RawConfigFile()
	if !bytes.Equal(gc, wc) {
		t.Fatalf("%s: config bytes differ", what)
	}
	wls, _ := want.Layers()
	for _, wl := range wls {
		ld, _ := wl.Digest()
		gl, err := got.LayerByDigest(ld)
		if err != nil {
			t.Fatalf("%s: layer %s: %v", what, ld, err)
		}
		if !bytes.Equal(readLayer(t, gl), readLayer(t, wl)) {
			t.Fatalf("%s: layer %s bytes differ", what, ld)
		}
	}
}

func readLayer(t *testing.T, l v1.Layer) []byte {
	t.Helper()
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestMigrateCorruptBlob: a blob file damaged on disk is named, fails the
// run, and is recorded nowhere at the destination, nor anything that
// needs it; the rest is copied.
func TestMigrateCorruptBlob(t *testing.T) {
	dir := t.TempDir()
	p := fillFolder(t, dir)
	img := p.images["app:v2"]
	layers, _ := img.Layers()
	bad, _ := layers[0].Digest()
	path := filepath.Join(dir, "blobs", bad.Algorithm, bad.Hex[:2], bad.Hex)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff // same size, other bytes
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	d := newDest(t)
	sum, err := migrate(t, dir, d)
	t.Logf("%s", sum)
	if err == nil || !strings.Contains(err.Error(), bad.String()) {
		t.Fatalf("run with a corrupt blob: %v; want an error naming %s", err, bad)
	}
	dst, _ := d.open(t)
	ctx := context.Background()
	if _, err := dst.StatBlob(ctx, toDigest(t, bad)); !errors.Is(err, cache.ErrBlobUnknown) {
		t.Fatalf("the corrupt blob is recorded at the destination: %v", err)
	}
	objects, uploads := d.srv.Keys(t, d.s3.Bucket, d.s3.Prefix)
	for _, k := range append(objects, uploads...) {
		if strings.Contains(k, bad.Hex) {
			t.Fatalf("the corrupt blob left %s in the bucket", k)
		}
	}
	if len(objects) == 0 {
		t.Fatal("the bucket is empty: the listing is wrong")
	}
	md, _ := img.Digest()
	if _, err := dst.StatManifest(ctx, "app", toDigest(t, md)); !errors.Is(err, cache.ErrManifestUnknown) {
		t.Fatalf("a manifest referencing the corrupt blob was copied: %v", err)
	}
	if _, err := dst.ResolveTag(ctx, "app", "v2"); !errors.Is(err, cache.ErrTagUnknown) {
		t.Fatalf("its tag was copied: %v", err)
	}
	good, _ := p.images["app:v1"].Digest()
	if _, err := dst.StatManifest(ctx, "app", toDigest(t, good)); err != nil {
		t.Fatalf("the rest was not copied: %v", err)
	}
}

// TestSourceInUse: a folder a server holds is refused with what to do,
// and a folder that is not a registry's is not made one.
func TestSourceInUse(t *testing.T) {
	dir := t.TempDir()
	st, err := cache.Open(cache.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := OpenSource(dir, ""); err == nil || !strings.Contains(err.Error(), "stop the server") {
		t.Fatalf("open of a folder in use: %v", err)
	}
	empty := t.TempDir()
	if _, err := OpenSource(empty, ""); err == nil || !strings.Contains(err.Error(), "not a registry's storage folder") {
		t.Fatalf("open of an empty folder: %v", err)
	}
	if ents, _ := os.ReadDir(empty); len(ents) != 0 {
		t.Fatalf("the empty folder was filled: %v", ents)
	}
}

func toDigest(t *testing.T, h v1.Hash) cache.Digest {
	t.Helper()
	d, err := cache.ParseDigest(h.String())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestCommand runs `caddy oci migrate` as an operator would: flags for
// where, the environment for secrets, which the output never shows; a
// second run copies nothing; missing settings are refused by name.
func TestCommand(t *testing.T) {
	dir := t.TempDir()
	fillFolder(t, dir)
	d := newDest(t)
	t.Setenv(EnvS3AccessKey, d.s3.AccessKey)
	t.Setenv(EnvS3SecretKey, d.s3.SecretKey)
	t.Setenv(EnvPostgres, d.dsn)
	args := []string{"--from", dir, "--s3-bucket", d.s3.Bucket, "--s3-endpoint", d.s3.Endpoint,
		"--s3-region", d.s3.Region, "--s3-prefix", d.s3.Prefix, "--s3-path-style"}
	run := func(args ...string) (string, error) {
		c := NewCommand()
		var out bytes.Buffer
		c.SetOut(&out)
		c.SetErr(&out)
		c.SetArgs(args)
		err := c.ExecuteContext(context.Background())
		return out.String(), err
	}
	out, err := run(args...)
	t.Logf("first run:\n%s", out)
	if err != nil {
		t.Fatalf("first run: %v", err)
	}
	for _, secret := range []string{d.s3.SecretKey, d.dsn} {
		if strings.Contains(out, secret) {
			t.Fatalf("the output shows a secret (%q)", secret)
		}
	}
	if !strings.Contains(out, "copied: 24 blobs") || !strings.Contains(out, "MB/s") {
		t.Fatalf("no summary of what was copied:\n%s", out)
	}
	out, err = run(args...)
	t.Logf("second run:\n%s", out)
	if err != nil || !strings.Contains(out, "copied: 0 blobs (0 bytes), 0 blob links, 0 manifests, 0 tags, 0 tag fetch times, 0 API keys, 0 sessions, 0 secrets") {
		t.Fatalf("second run copied something: %v\n%s", err, out)
	}

	t.Setenv(EnvPostgres, "")
	if _, err := run(args...); err == nil || !strings.Contains(err.Error(), EnvPostgres) {
		t.Fatalf("run without a database: %v", err)
	}
	if _, err := run("--s3-bucket", "b", "--postgres", d.dsn); err == nil || !strings.Contains(err.Error(), "--from") {
		t.Fatalf("run without --from: %v", err)
	}
	if _, err := run(append(args, "--postgres", d.dsn, "--jobs", "0")...); err == nil || !strings.Contains(err.Error(), "--jobs") {
		t.Fatalf("run with --jobs 0: %v", err)
	}
	if _, err := run("--from", dir, "--postgres", d.dsn); err == nil || !strings.Contains(err.Error(), "--s3-bucket") {
		t.Fatalf("run without a bucket: %v", err)
	}
}

// cutAfter is the destination store that becomes unreachable after n
// blobs, as a bucket or database going away mid-run does.
type cutAfter struct {
	*composite.Store
	n int
}

func (c *cutAfter) PutBlob(ctx context.Context, d cache.Digest, size int64, r io.Reader) (int64, error) {
	if c.n <= 0 {
		return 0, fmt.Errorf("%w: test cut the line", cache.ErrUnavailable)
	}
	c.n--
	return c.Store.PutBlob(ctx, d, size, r)
}

// TestMigrateResumes: a run that loses its destination part way ends
// with an error at once; the next run copies only what is missing and
// verifies everything.
func TestMigrateResumes(t *testing.T) {
	dir := t.TempDir()
	fillFolder(t, dir)
	d := newDest(t)
	src, err := OpenSource(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	dst, meta := d.open(t)
	// One worker, so exactly 5 blobs land before the cut.
	sum, err := Run(context.Background(), src, &cutAfter{Store: dst, n: 5}, meta, Options{Verify: true, Jobs: 1})
	src.Close()
	if !errors.Is(err, cache.ErrUnavailable) || sum.Blobs != 5 || sum.Manifests != 0 {
		t.Fatalf("cut run: %v\n%s", err, sum)
	}
	again, err := migrate(t, dir, d)
	t.Logf("resumed:\n%s", again)
	if err != nil || again.BlobsPresent != 5 || again.Blobs+5 != again.VerifiedBlobs || again.Manifests == 0 {
		t.Fatalf("resumed run: %v\n%s", err, again)
	}
}
