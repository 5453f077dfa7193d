package s3

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/storetest"
)

// newStore opens a Store on srv's bucket under prefix with the smallest
// part size, so the contract's chunk sizes cross part boundaries.
func newStore(t *testing.T, srv *s3test.Server, bucket, prefix string) *Store {
	t.Helper()
	s, err := New(context.Background(), Config{
		Bucket: bucket, Endpoint: srv.Endpoint, Region: srv.Region, Prefix: prefix,
		AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true, PartSize: minPartSize,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestContract(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	var n atomic.Int64
	storetest.Run(t, func(t *testing.T) storetest.Backend {
		prefix := fmt.Sprintf("registry-%d/", n.Add(1))
		return func() blobstore.Store { return newStore(t, srv, bucket, prefix) }
	})
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// TestKeysAndCleanup checks what the bucket holds: a session's blob as its
// data object, marker and link, and nothing else once sessions are
// committed or cancelled, including the multipart upload and tail a
// failed Append left behind.
func TestKeysAndCleanup(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	s := newStore(t, srv, bucket, "reg")
	c := randomBytes(13<<20 + 5)
	d := blobstore.FromBytes(blobstore.SHA256, c)
	sess, err := s.NewSession(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Append(ctx(t), 0, bytes.NewReader(c[:3<<20])); err != nil {
		t.Fatal(err)
	}
	// Breaks after starting the multipart upload: state keeps no trace.
	if _, err := sess.Append(ctx(t), 3<<20, io.MultiReader(bytes.NewReader(c[3<<20:9<<20]), iotest.ErrReader(errors.New("cut")))); err == nil {
		t.Fatal("Append from a broken reader succeeded")
	}
	if objects, uploads := srv.Keys(t, bucket, "reg/"); len(objects) != 1 || len(uploads) != 1 {
		t.Fatalf("before the commit: objects %q, uploads %q; want the tail and the orphaned upload", objects, uploads)
	}
	if _, err := sess.Append(ctx(t), 3<<20, bytes.NewReader(c[3<<20:])); err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Commit(ctx(t), d, int64(len(c))); err != nil {
		t.Fatal(err)
	}
	id := sess.ID()
	want := []string{
		"reg/data/" + id[:2] + "/" + id, "reg/data/" + id[:2] + "/" + id + ".sha256." + d.Hex,
		"reg/links/sha256/" + d.Hex[:2] + "/" + d.Hex,
	}
	objects, uploads := srv.Keys(t, bucket, "")
	slices.Sort(objects)
	if !slices.Equal(objects, want) || len(uploads) != 0 {
		t.Fatalf("after the commit: objects %q, uploads %q; want only %q", objects, uploads, want)
	}

	// A cancelled session leaves nothing either.
	sess, err = s.NewSession(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Append(ctx(t), 0, bytes.NewReader(c[:7<<20])); err != nil {
		t.Fatal(err)
	}
	if err := sess.Cancel(ctx(t)); err != nil {
		t.Fatal(err)
	}
	objects, uploads = srv.Keys(t, bucket, "")
	if len(objects) != 3 || len(uploads) != 0 {
		t.Fatalf("after the cancel: objects %q, uploads %q; want only %s", objects, uploads, want)
	}

	// A refused multipart Put aborts its upload at the blob key.
	other := blobstore.FromBytes(blobstore.SHA256, []byte("other"))
	if _, err := s.Put(ctx(t), other, -1, bytes.NewReader(c)); !errors.Is(err, blobstore.ErrDigestMismatch) {
		t.Fatalf("Put of wrong bytes: %v", err)
	}
	objects, uploads = srv.Keys(t, bucket, "")
	if len(objects) != 3 || len(uploads) != 0 {
		t.Fatalf("after a refused Put: objects %q, uploads %q; want only %s", objects, uploads, want)
	}
}

// TestTamperedTailIsRefused: the bytes a tail holds are checked against
// the state before they go anywhere, so a tail that changed (a bug, a
// stray writer) fails the session instead of becoming a blob.
func TestTamperedTailIsRefused(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	s := newStore(t, srv, bucket, "")
	for _, n := range []int{100, 6 << 20} {
		c := randomBytes(n)
		d := blobstore.FromBytes(blobstore.SHA256, c)
		sess, err := s.NewSession(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sess.Append(ctx(t), 0, bytes.NewReader(c)); err != nil {
			t.Fatal(err)
		}
		st := sess.(*session).st
		forged := bytes.Repeat([]byte{'x'}, int(st.TailSize))
		if err := s.putObject(ctx(t), s.tailKey(st.ID, st.Tail), forged); err != nil {
			t.Fatal(err)
		}
		if _, err := sess.Commit(ctx(t), d, -1); err == nil {
			t.Fatalf("%d bytes: Commit over a forged tail succeeded", n)
		}
		if _, err := s.Stat(ctx(t), d); !errors.Is(err, blobstore.ErrNotFound) {
			t.Fatalf("%d bytes: blob visible after a forged tail: %v", n, err)
		}
	}
}

// TestResumeRefusesHostileState: a state names keys, so one that does not
// add up is refused before any key is built from it.
func TestResumeRefusesHostileState(t *testing.T) {
	srv := s3test.Start(t)
	s := newStore(t, srv, srv.Bucket(t), "")
	sess, err := s.NewSession(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Append(ctx(t), 0, bytes.NewReader(randomBytes(100))); err != nil {
		t.Fatal(err)
	}
	good, err := sess.State()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ResumeSession(ctx(t), good); err != nil {
		t.Fatalf("the untouched state: %v", err)
	}
	edits := map[string]func(m map[string]any){
		"id with a path":        func(m map[string]any) { m["id"] = "../../blobs/sha256/aa/" + strings.Repeat("a", 10) },
		"id upper case":         func(m map[string]any) { m["id"] = strings.ToUpper(m["id"].(string)) },
		"tail with a path":      func(m map[string]any) { m["tail"] = "../" + m["tail"].(string)[3:] },
		"size not adding up":    func(m map[string]any) { m["size"] = 101.0 },
		"negative size":         func(m map[string]any) { m["size"], m["tail_size"] = -1.0, -1.0 },
		"tail as big as a part": func(m map[string]any) { m["tail_size"], m["size"] = float64(minPartSize), float64(minPartSize) },
		"tiny part size":        func(m map[string]any) { m["part_size"] = 1.0 },
		"parts without upload":  func(m map[string]any) { m["parts"] = []string{"x"} },
		"ended":                 func(m map[string]any) { m["ended"] = true },
		"checksums, no crc32c":  func(m map[string]any) { m["part_crc32c"] = []string{"AAAAAA=="} },
		"checksums not parts":   func(m map[string]any) { m["crc32c"], m["part_crc32c"] = true, []string{"AAAAAA=="} },
		"other version":         func(m map[string]any) { m["v"] = 1.0 },
		"hash state cut":        func(m map[string]any) { m["sha256"] = "AAAA" },
	}
	for name, edit := range edits {
		var m map[string]any
		if err := json.Unmarshal(good, &m); err != nil {
			t.Fatal(err)
		}
		edit(m)
		bad, _ := json.Marshal(m)
		if _, err := s.ResumeSession(ctx(t), bad); !errors.Is(err, blobstore.ErrSessionUnknown) {
			t.Errorf("%s: ResumeSession = %v, want ErrSessionUnknown", name, err)
		}
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	ok := Config{Bucket: "registry", Endpoint: "http://127.0.0.1:9000", AccessKey: "a", SecretKey: "s"}
	tests := map[string]func(c *Config){
		"no bucket":            func(c *Config) { c.Bucket = "" },
		"bucket with a slash":  func(c *Config) { c.Bucket = "reg/istry" },
		"bucket upper case":    func(c *Config) { c.Bucket = "Registry" },
		"prefix with ..":       func(c *Config) { c.Prefix = "a/../b/" },
		"prefix with //":       func(c *Config) { c.Prefix = "a//b" },
		"prefix from the root": func(c *Config) { c.Prefix = "/a" },
		"prefix with a space":  func(c *Config) { c.Prefix = "a b/" },
		"prefix with ?":        func(c *Config) { c.Prefix = "a?x=1/" },
		"endpoint not http":    func(c *Config) { c.Endpoint = "ftp://h" },
		"endpoint with user":   func(c *Config) { c.Endpoint = "http://u:p@h" },
		"endpoint with query":  func(c *Config) { c.Endpoint = "http://h/?x=1" },
		"endpoint no host":     func(c *Config) { c.Endpoint = "http:///x" },
		"access without key":   func(c *Config) { c.SecretKey = "" },
		"secret without key":   func(c *Config) { c.AccessKey = "" },
		"part size too small":  func(c *Config) { c.PartSize = minPartSize - 1 },
		"part size too big":    func(c *Config) { c.PartSize = maxPartSize + 1 },
	}
	for name, edit := range tests {
		c := ok
		edit(&c)
		if _, err := New(context.Background(), c, nil); err == nil {
			t.Errorf("%s: New accepted %+v", name, c)
		}
	}
	s, err := New(context.Background(), Config{Bucket: "registry", Prefix: "caddy-oci/a_b.c"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.prefix != "caddy-oci/a_b.c/" || s.partSize != defaultPartSize {
		t.Fatalf("prefix %q, part size %d", s.prefix, s.partSize)
	}
}
