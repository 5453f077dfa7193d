package migrate

import (
	"bytes"
	"context"
	"errors"
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
	"github.com/caddy-oci/caddy-oci/caddymodule"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
	"github.com/caddy-oci/caddy-oci/registry"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		runChild()
	}
	os.Exit(pgtest.Main(m))
}

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
	// A push in progress: not copied, counted.
	if _, err := st.NewUpload(ctx, "app"); err != nil {
		t.Fatal(err)
	}
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

// dest is a fresh destination of one kind, as the command opens it.
type dest struct {
	b   caddymodule.Backends
	srv *s3test.Server // the bucket's, if any
}

// destKinds are the setups a folder migrates into, each a fresh one: one
// contract, every destination. src is the folder being migrated (the
// in-place kind's blobs stay there).
var destKinds = []struct {
	name string
	new  func(t *testing.T, src string) dest
}{
	{"s3+postgres", func(t *testing.T, _ string) dest {
		d := s3Dest(t)
		d.b.Postgres = pgtest.NewDatabase(t)
		return d
	}},
	{"s3+embedded", func(t *testing.T, _ string) dest {
		d := s3Dest(t)
		d.b.MetadataDir = filepath.Join(t.TempDir(), "meta")
		return d
	}},
	{"shared-folder+postgres", func(t *testing.T, _ string) dest {
		return dest{b: caddymodule.Backends{Folder: t.TempDir(), Postgres: pgtest.NewDatabase(t)}}
	}},
	{"same-folder+postgres", func(t *testing.T, src string) dest {
		return dest{b: caddymodule.Backends{Folder: src, Postgres: pgtest.NewDatabase(t)}}
	}},
}

func s3Dest(t *testing.T) dest {
	t.Helper()
	srv := s3test.Start(t)
	return dest{
		b: caddymodule.Backends{S3: &s3.Config{Bucket: srv.Bucket(t), Endpoint: srv.Endpoint, Region: srv.Region,
			AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true, Prefix: "reg/"}},
		srv: srv,
	}
}

// open opens the destination as the command does; closed at the end of
// the test at the latest (the embedded database opens once at a time).
func (d dest) open(t *testing.T) *Destination {
	t.Helper()
	dst, err := OpenDestination(context.Background(), d.b)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dst.Close)
	return dst
}

// blobKeys lists the blob objects or files the destination holds.
func (d dest) blobKeys(t *testing.T) []string {
	t.Helper()
	if d.srv != nil {
		objects, uploads := d.srv.Keys(t, d.b.S3.Bucket, d.b.S3.Prefix+"blobs/")
		return append(objects, uploads...)
	}
	var out []string
	_ = filepath.WalkDir(filepath.Join(d.b.Folder, "blobs"), func(p string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			out = append(out, p)
		}
		return nil
	})
	return out
}

func migrate(t *testing.T, dir string, d dest) (Summary, error) {
	t.Helper()
	src, err := OpenSource(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst := d.open(t)
	defer dst.Close()
	return Run(context.Background(), src, dst.Target, Options{Verify: true, Progress: func(l string) { t.Log(l) }})
}

// linkTimes reads the folder's blob link times of repo.
func linkTimes(t *testing.T, dir, repo string) map[cache.Digest]time.Time {
	t.Helper()
	src, err := OpenSource(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	times, err := src.BlobLinkTimes(context.Background(), repo)
	if err != nil || len(times) == 0 {
		t.Fatalf("link times of %s: %v, %v", repo, times, err)
	}
	return times
}

// TestMigrate: a folder filled through the registry is copied into each
// kind of destination (versitygw or a folder, PostgreSQL or the embedded
// database); a registry serving it gives back every image byte for byte,
// by tag and by digest, with the referrer, the links' times, the
// mirror's fetch time and the auth records; a second run copies nothing.
func TestMigrate(t *testing.T) {
	for _, k := range destKinds {
		t.Run(k.name, func(t *testing.T) {
			dir := t.TempDir()
			p := fillFolder(t, dir)
			testMigrate(t, dir, p, k.new(t, dir))
		})
	}
}

func testMigrate(t *testing.T, dir string, p pushed, d dest) {
	links := linkTimes(t, dir, "app")
	time.Sleep(10 * time.Millisecond) // a link made by the run would be this much younger
	sum, err := migrate(t, dir, d)
	t.Logf("first run:\n%s", sum)
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if sum.Blobs == 0 || sum.Manifests == 0 || sum.Tags != 6 || sum.TagFetches != 1 ||
		sum.APIKeys != 1 || sum.Sessions != 1 || sum.Secrets != 1 || sum.VerifiedBlobs != sum.Blobs ||
		sum.UploadsLeft != 1 || !strings.Contains(sum.String(), "not copied: 1 upload sessions") {
		t.Fatalf("first run copied too little: %+v", sum)
	}

	if d.srv != nil {
		// Blobs go through the bucket's Put with their digest (one PUT
		// each), never an upload session: nothing but blobs is left.
		objects, uploads := d.srv.Keys(t, d.b.S3.Bucket, d.b.S3.Prefix)
		for _, k := range append(objects, uploads...) {
			if !strings.HasPrefix(k, d.b.S3.Prefix+"blobs/") {
				t.Fatalf("the migration left %s in the bucket", k)
			}
		}
		if len(uploads) != 0 || len(objects) != sum.Blobs {
			t.Fatalf("%d objects and %d multipart uploads for %d blobs", len(objects), len(uploads), sum.Blobs)
		}
	}
	opened := d.open(t)
	dst, meta := opened.Store.(*composite.Store), opened.Auth
	ctx := context.Background()
	// Before any pull: a HEAD renews an old link.
	for dg, want := range links {
		l, _, err := opened.Meta.BlobLink(ctx, "app", dg)
		if diff := l.Linked.Sub(want).Abs(); err != nil || diff >= time.Microsecond {
			t.Fatalf("link app@%s: %v at %v, want the folder's %v", dg, err, l.Linked, want)
		}
	}
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
	if key, _, err := meta.ImportAuthSecret("session", []byte("another")); err != nil || !bytes.Equal(key, p.secret) {
		t.Fatalf("session key not the folder's: %v", err)
	}
	srv.Close()
	opened.Close()

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
	for _, k := range destKinds {
		if strings.HasPrefix(k.name, "same-folder") {
			continue // the damaged file is the destination's too
		}
		t.Run(k.name, func(t *testing.T) {
			testMigrateCorruptBlob(t, k.new(t, ""))
		})
	}
}

func testMigrateCorruptBlob(t *testing.T, d dest) {
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
	sum, err := migrate(t, dir, d)
	t.Logf("%s", sum)
	if err == nil || !strings.Contains(err.Error(), bad.String()) {
		t.Fatalf("run with a corrupt blob: %v; want an error naming %s", err, bad)
	}
	dst := d.open(t).Store
	ctx := context.Background()
	if _, err := dst.StatBlob(ctx, toDigest(t, bad)); !errors.Is(err, cache.ErrBlobUnknown) {
		t.Fatalf("the corrupt blob is recorded at the destination: %v", err)
	}
	keys := d.blobKeys(t)
	for _, k := range keys {
		if strings.Contains(k, bad.Hex) {
			t.Fatalf("the corrupt blob left %s at the destination", k)
		}
	}
	if len(keys) == 0 {
		t.Fatal("the destination holds no blob: the listing is wrong")
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
