package fs

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/internal/backend"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/storetest"
)

func newStore(t testing.TB, dir string) *Store {
	t.Helper()
	s, err := New(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestContract: every Backend call is another Store on the same folder,
// as another replica sharing it would be.
func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Backend {
		dir := t.TempDir()
		return func() blobstore.Store { return newStore(t, dir) }
	})
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func wantBytes(t *testing.T, s blobstore.Reader, d blobstore.Digest, want []byte) {
	t.Helper()
	b, err := s.Open(ctx(t), d)
	if err != nil {
		t.Fatalf("Open %s: %v", d, err)
	}
	defer b.Close()
	got, err := io.ReadAll(b)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("%s: %d bytes (%v), want %d bytes", d, len(got), err, len(want))
	}
}

// started is a new session on s holding b, and its state.
func started(t *testing.T, s *Store, b []byte) (blobstore.Session, []byte) {
	t.Helper()
	sess, err := s.NewSession(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Append(ctx(t), 0, bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
	state, err := sess.State()
	if err != nil {
		t.Fatal(err)
	}
	return sess, state
}

// tree lists every file and folder under root with its size and time, to
// tell whether anything was touched.
func tree(t *testing.T, root string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(root, func(p string, e iofs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		m[p] = fi.Mode().String() + " " + fi.ModTime().String()
		if !e.IsDir() {
			m[p] += fmt.Sprintf(" %d bytes", fi.Size())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestResumeRefusesHostileState: a state's id becomes a file name and its
// size an offset, so one that does not add up is refused (ErrSessionUnknown)
// before anything is opened, created or cut.
func TestResumeRefusesHostileState(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "store")
	s := newStore(t, dir)
	// What a path in the id would reach: root/x, root/store/x.
	for _, p := range []string{filepath.Join(root, "x"), filepath.Join(dir, "x")} {
		if err := os.WriteFile(p, []byte("not yours"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sess, good := started(t, s, randomBytes(100))
	if _, err := s.ResumeSession(ctx(t), good); err != nil {
		t.Fatalf("the untouched state: %v", err)
	}
	hashOf := func(n int) string {
		h, err := backend.CloneSHA256(sess.(*session).h)
		if err != nil {
			t.Fatal(err)
		}
		h.Write(make([]byte, n))
		st, err := backend.MarshalSHA256(h)
		if err != nil {
			t.Fatal(err)
		}
		return base64.StdEncoding.EncodeToString(st)
	}
	edits := map[string]func(m map[string]any){
		"id ../../x":            func(m map[string]any) { m["id"] = "../../x" },
		"id ../x, padded":       func(m map[string]any) { m["id"] = "../x" + strings.Repeat("0", 28) },
		"id a blob path":        func(m map[string]any) { m["id"] = "../blobs/sha256/aa/" + strings.Repeat("a", 13) },
		"id upper case":         func(m map[string]any) { m["id"] = strings.ToUpper(m["id"].(string)) },
		"id empty":              func(m map[string]any) { m["id"] = "" },
		"absurd size":           func(m map[string]any) { m["size"] = float64(1 << 62) },
		"negative size":         func(m map[string]any) { m["size"] = -1.0 },
		"size without its hash": func(m map[string]any) { m["size"] = 50.0 },
		"hash state cut":        func(m map[string]any) { m["sha256"] = m["sha256"].(string)[:40] },
		"hash state empty":      func(m map[string]any) { delete(m, "sha256") },
		"hash state not base64": func(m map[string]any) { m["sha256"] = "!!" },
		"ended":                 func(m map[string]any) { m["ended"] = true },
		"other version":         func(m map[string]any) { m["v"] = 2.0 },
		"another backend's":     func(m map[string]any) { m["kind"] = "s3" },
		"no kind":               func(m map[string]any) { delete(m, "kind") },
		"unknown field":         func(m map[string]any) { m["upload_id"] = "x" },
	}
	before := tree(t, root)
	for name, edit := range edits {
		var m map[string]any
		if err := json.Unmarshal(good, &m); err != nil {
			t.Fatal(err)
		}
		edit(m)
		bad, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.ResumeSession(ctx(t), bad); !errors.Is(err, blobstore.ErrSessionUnknown) {
			t.Errorf("%s: ResumeSession = %v, want ErrSessionUnknown", name, err)
		}
	}
	// A state that adds up but claims more bytes than the file holds is
	// only found out by the file: Append and Commit refuse it, and cut
	// nothing.
	var m map[string]any
	if err := json.Unmarshal(good, &m); err != nil {
		t.Fatal(err)
	}
	m["sha256"], m["size"] = hashOf(1<<20), float64(100+1<<20)
	liar, _ := json.Marshal(m)
	sess, err := s.ResumeSession(ctx(t), liar)
	if err != nil {
		t.Fatalf("a consistent state: %v", err)
	}
	if _, err := sess.Append(ctx(t), sess.Size(), bytes.NewReader([]byte("more"))); !errors.Is(err, blobstore.ErrSessionUnknown) {
		t.Errorf("Append with a size beyond the file: %v", err)
	}
	if _, err := sess.Commit(ctx(t), blobstore.FromBytes(blobstore.SHA256, nil), -1); !errors.Is(err, blobstore.ErrSessionUnknown) {
		t.Errorf("Commit with a size beyond the file: %v", err)
	}
	diffTrees(t, before, tree(t, root))
	for _, p := range []string{filepath.Join(root, "x"), filepath.Join(dir, "x")} {
		if b, err := os.ReadFile(p); err != nil || string(b) != "not yours" {
			t.Errorf("%s: %q, %v", p, b, err)
		}
	}
}

func diffTrees(t *testing.T, before, after map[string]string) {
	t.Helper()
	for p, v := range before {
		if after[p] != v {
			t.Errorf("%s changed: %q, was %q", p, after[p], v)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("%s appeared", p)
		}
	}
}

// TestTwoInstancesShareSessions: two Stores on one folder, as two replicas
// on a shared folder, take turns on the chunks of sessions, commit on
// either, and see each other's blobs and cancels.
func TestTwoInstancesShareSessions(t *testing.T) {
	dir := t.TempDir()
	a, b := newStore(t, dir), newStore(t, dir)
	c := randomBytes(3<<20 + 17)
	for _, alg := range []blobstore.Algorithm{blobstore.SHA256, blobstore.SHA512} {
		sess, err := a.NewSession(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		stores := []*Store{b, a}
		for i, off := 0, 0; off < len(c); i++ {
			n := min(1<<20+i, len(c)-off)
			state, err := sess.State()
			if err != nil {
				t.Fatal(err)
			}
			if sess, err = stores[i%2].ResumeSession(ctx(t), state); err != nil {
				t.Fatalf("chunk %d: resume: %v", i, err)
			}
			if _, err := sess.Append(ctx(t), int64(off), bytes.NewReader(c[off:off+n])); err != nil {
				t.Fatalf("chunk %d: %v", i, err)
			}
			off += n
		}
		state, err := sess.State()
		if err != nil {
			t.Fatal(err)
		}
		onB, err := b.ResumeSession(ctx(t), state)
		if err != nil {
			t.Fatal(err)
		}
		d := blobstore.FromBytes(alg, c)
		if _, err := onB.Commit(ctx(t), d, int64(len(c))); err != nil {
			t.Fatalf("%s: Commit on the other instance: %v", alg, err)
		}
		wantBytes(t, a, d, c)
	}

	// A session cancelled on one instance is gone for the other.
	sess, state := started(t, a, c[:10])
	onB, err := b.ResumeSession(ctx(t), state)
	if err != nil {
		t.Fatal(err)
	}
	if err := onB.Cancel(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Append(ctx(t), 10, bytes.NewReader(c[10:20])); !errors.Is(err, blobstore.ErrSessionUnknown) {
		t.Fatalf("Append after the other instance cancelled: %v", err)
	}
	noneLeft(t, dir)
}

// noneLeft fails when a session or a temp file is left in dir.
func noneLeft(t *testing.T, dir string) {
	t.Helper()
	for _, sub := range []string{"uploads", "tmp"} {
		left, err := os.ReadDir(filepath.Join(dir, sub))
		if err != nil {
			t.Fatal(err)
		}
		if len(left) != 0 {
			t.Errorf("%s/ still holds %d entries", sub, len(left))
		}
	}
}

// TestTornChunk: a replica killed mid-Append leaves bytes in the file the
// state never counted. The retry of the chunk (on another instance) cuts
// them off and goes on; a file shorter than the state means the session
// lost bytes and is unknown.
func TestTornChunk(t *testing.T) {
	dir := t.TempDir()
	s := newStore(t, dir)
	c := randomBytes(5000)
	sess, state := started(t, s, c[:1000])
	// What the killed replica wrote of the next chunk, garbled.
	f, err := os.OpenFile(filepath.Join(dir, "uploads", sess.ID()), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(bytes.Repeat([]byte{'x'}, 700))
	f.Close()
	retry, err := newStore(t, dir).ResumeSession(ctx(t), state)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := retry.Append(ctx(t), 1000, bytes.NewReader(c[1000:])); err != nil {
		t.Fatalf("retry after a torn chunk: %v", err)
	}
	d := blobstore.FromBytes(blobstore.SHA256, c)
	if _, err := retry.Commit(ctx(t), d, int64(len(c))); err != nil {
		t.Fatal(err)
	}
	wantBytes(t, s, d, c)

	// Lost bytes: the file is cut below what the state counted.
	sess, _ = started(t, s, c)
	if err := os.Truncate(filepath.Join(dir, "uploads", sess.ID()), 10); err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Append(ctx(t), int64(len(c)), bytes.NewReader(c)); !errors.Is(err, blobstore.ErrSessionUnknown) {
		t.Errorf("Append to a session that lost bytes: %v", err)
	}
	if _, err := sess.Commit(ctx(t), d, -1); !errors.Is(err, blobstore.ErrSessionUnknown) {
		t.Errorf("Commit of a session that lost bytes: %v", err)
	}
	if err := sess.Cancel(ctx(t)); err != nil {
		t.Fatal(err)
	}
	noneLeft(t, dir)
}

// TestFailuresLeaveNoFiles: a refused or broken Put leaves nothing in tmp/
// or blobs/.
func TestFailuresLeaveNoFiles(t *testing.T) {
	dir := t.TempDir()
	s := newStore(t, dir)
	c := randomBytes(3 << 20)
	d := blobstore.FromBytes(blobstore.SHA256, c)
	cctx, cancel := context.WithCancel(context.Background())
	cancel()
	for name, put := range map[string]func() error{
		"wrong digest": func() error {
			_, err := s.Put(ctx(t), blobstore.FromBytes(blobstore.SHA256, c[1:]), -1, bytes.NewReader(c))
			return err
		},
		"too long":  func() error { _, err := s.Put(ctx(t), d, 100, bytes.NewReader(c)); return err },
		"cancelled": func() error { _, err := s.Put(cctx, d, -1, bytes.NewReader(c)); return err },
	} {
		if err := put(); err == nil {
			t.Errorf("%s: Put succeeded", name)
		}
	}
	if _, err := s.Stat(ctx(t), d); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("blob after failed puts: %v", err)
	}
	noneLeft(t, dir)
}

// TestLayoutSharedWithCache: a folder written by package cache is read by
// this backend, and a blob this backend writes is one cache finds.
func TestLayoutSharedWithCache(t *testing.T) {
	dir := t.TempDir()
	cs, err := cache.Open(cache.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	whole, chunked := randomBytes(2<<20+3), randomBytes(1<<20+5)
	dw := blobstore.FromBytes(blobstore.SHA256, whole)
	dc := blobstore.FromBytes(blobstore.SHA512, chunked)
	if _, err := cs.PutBlob(t.Context(), dw, int64(len(whole)), bytes.NewReader(whole)); err != nil {
		t.Fatal(err)
	}
	u, err := cs.NewUpload(t.Context(), "app")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.AppendUpload(t.Context(), "app", u.ID, 0, bytes.NewReader(chunked)); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CommitUpload(t.Context(), "app", u.ID, dc); err != nil {
		t.Fatal(err)
	}
	if err := cs.Close(); err != nil {
		t.Fatal(err)
	}

	s := newStore(t, dir)
	wantBytes(t, s, dw, whole)
	wantBytes(t, s, dc, chunked)
	mine := randomBytes(1000)
	dm := blobstore.FromBytes(blobstore.SHA256, mine)
	if _, err := s.Put(ctx(t), dm, int64(len(mine)), bytes.NewReader(mine)); err != nil {
		t.Fatal(err)
	}

	cs, err = cache.Open(cache.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	f, err := cs.OpenBlob(t.Context(), dm)
	if err != nil {
		t.Fatalf("cache cannot open a blob the fs backend wrote: %v", err)
	}
	defer f.Close()
	if got, err := io.ReadAll(f); err != nil || !bytes.Equal(got, mine) {
		t.Fatalf("cache reads %d bytes, %v", len(got), err)
	}
}
