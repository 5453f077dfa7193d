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
