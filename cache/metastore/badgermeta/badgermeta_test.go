package badgermeta

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/authscope/authstoretest"
	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/internal/badgeropen"
	"github.com/caddy-oci/caddy-oci/cache/metastore"
	"github.com/caddy-oci/caddy-oci/cache/metastore/metatest"
	badger "github.com/dgraph-io/badger/v4"
)

func open(t testing.TB) *Store {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

func TestContract(t *testing.T) {
	metatest.Run(t, func(t *testing.T) metastore.Store { return open(t) })
}

// The same benchmarks as pgmeta's, so the figures compare (badger syncs
// every write; PostgreSQL's test server does not).

func BenchmarkPutManifest(b *testing.B) { metatest.BenchPutManifest(b, open(b)) }

func BenchmarkTagGet(b *testing.B) { metatest.BenchTagGet(b, open(b)) }

func TestAPIKeyContract(t *testing.T) {
	authstoretest.APIKeys(t, func(t *testing.T) authscope.APIKeyStore { return open(t) })
}

func TestSessionContract(t *testing.T) {
	authstoretest.Sessions(t, func(t *testing.T) authscope.SessionStore { return open(t) })
}

// TestOpenRefusesDamagedTable: a table whose last pages a crash left
// zeroed is refused at Open with badgeropen.ErrDamaged naming it (badger
// panicked in a goroutine of its own: the process died at every start).
func TestOpenRefusesDamagedTable(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.RecordBlob(context.Background(), blobstore.FromBytes(blobstore.SHA256, []byte("layer")), 5, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil { // flushes the memtable into a table
		t.Fatal(err)
	}
	tables, _ := filepath.Glob(filepath.Join(dir, "*.sst"))
	if len(tables) != 1 {
		t.Fatalf("want one table after Close, have %v", tables)
	}
	b, err := os.ReadFile(tables[0])
	if err != nil {
		t.Fatal(err)
	}
	clear(b[max(0, len(b)-4096):])
	if err := os.WriteFile(tables[0], b, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err = Open(dir)
	if err == nil {
		s.Close()
		t.Fatal("opened with a damaged table")
	}
	if !errors.Is(err, badgeropen.ErrDamaged) || !strings.Contains(err.Error(), filepath.Base(tables[0])) {
		t.Fatalf("error does not name the damaged table: %v", err)
	}
}

// TestDeleteDamagedManifest: a DELETE of a manifest whose record does not
// read back (its value log cut short: badger answers it empty) removes its
// referrer and reference entries too, as a DELETE of a whole one does, so
// that GC can free what only it referenced; a whole manifest with the same
// subject and references keeps its own.
func TestDeleteDamagedManifest(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	subject, layer := blobstore.FromBytes(blobstore.SHA256, []byte("subject")), blobstore.FromBytes(blobstore.SHA256, []byte("layer"))
	var ms []metastore.Manifest
	for _, name := range []string{"damaged", "whole"} {
		body := []byte(`{"schemaVersion":2,"name":"` + name + `"}`)
		m := metastore.Manifest{Digest: blobstore.FromBytes(blobstore.SHA256, body), MediaType: "application/vnd.oci.image.manifest.v1+json",
			Subject: subject, Refs: []metastore.Digest{layer}}
		if err := s.PutManifest(ctx, "r", m, body, []string{name}); err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
	}
	damaged, whole := ms[0].Digest.String(), ms[1].Digest.String()
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(key("m/", "r", damaged), nil) }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Manifest(ctx, "r", ms[0].Digest); !errors.Is(err, metastore.ErrDamaged) {
		t.Fatalf("the damaged record reads %v; want ErrDamaged", err)
	}
	if err := s.DeleteManifest(ctx, "r", ms[0].Digest); err != nil {
		t.Fatal(err)
	}
	err := s.db.View(func(txn *badger.Txn) error {
		for _, c := range []struct {
			k    []byte
			want bool
		}{
			{key("s/", "r", subject.String(), damaged), false},
			{key("ref/", "r", layer.String(), damaged), false},
			{key("m/", "r", damaged), false},
			{key("s/", "r", subject.String(), whole), true},
			{key("ref/", "r", layer.String(), whole), true},
		} {
			if ok, err := has(txn, c.k); err != nil || ok != c.want {
				t.Errorf("after the delete of the damaged manifest, %q there: %v (%v); want %v", c.k, ok, err, c.want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
