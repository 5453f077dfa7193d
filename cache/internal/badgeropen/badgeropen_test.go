package badgeropen

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dgraph-io/badger/v4"
)

// Damage is what a crash on a disk without write barriers can leave of
// a table its MANIFEST already lists.
var damages = []struct {
	name   string
	damage func(t *testing.T, path string, size int64)
}{
	// The last pages never reached the disk: the footer reads as zeros
	// (badger panicked in its own goroutine: the process died).
	{"tail zeroed", func(t *testing.T, path string, size int64) { overwrite(t, path, size-4096, make([]byte, 4096)) }},
	// The file's length was recorded, not all its data (same panic).
	{"cut short", func(t *testing.T, path string, size int64) {
		if err := os.Truncate(path, size/2); err != nil {
			t.Fatal(err)
		}
	}},
	// A page in the middle is another file's (badger opened it and
	// served whatever the block decoded to).
	{"block overwritten", func(t *testing.T, path string, size int64) {
		overwrite(t, path, size/4, []byte(strings.Repeat("garbage!", 512)))
	}},
}

func overwrite(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func testOptions(dir string) badger.Options {
	return badger.DefaultOptions(dir).WithLogger(nil).WithMemTableSize(4 << 20).WithValueThreshold(1 << 10)
}

// filledDB writes enough keys for a table of several blocks and closes
// the database, which flushes its memtable into a table; it returns the
// table's path.
func filledDB(t *testing.T) (dir, sst string) {
	t.Helper()
	dir = t.TempDir()
	db, err := Open(testOptions(dir))
	if err != nil {
		t.Fatal(err)
	}
	wb := db.NewWriteBatch()
	for i := range 2000 {
		if err := wb.Set(fmt.Appendf(nil, "tag/%05d", i), []byte(strings.Repeat("v", 200))); err != nil {
			t.Fatal(err)
		}
	}
	if err := wb.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	tables, _ := filepath.Glob(filepath.Join(dir, "*.sst"))
	if len(tables) != 1 {
		t.Fatalf("want one table after close, have %v", tables)
	}
	return dir, tables[0]
}

func TestOpenRefusesDamagedTable(t *testing.T) {
	for _, c := range damages {
		t.Run(c.name, func(t *testing.T) {
			dir, sst := filledDB(t)
			fi, err := os.Stat(sst)
			if err != nil {
				t.Fatal(err)
			}
			c.damage(t, sst, fi.Size())
			db, err := Open(testOptions(dir))
			if err == nil {
				db.Close()
				t.Fatalf("opened with %s damaged (%s)", filepath.Base(sst), c.name)
			}
			if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), filepath.Base(sst)) {
				t.Fatalf("error does not name the damaged table: %v", err)
			}
			t.Logf("%s: %v", c.name, err)
		})
	}
}

func TestOpenKeepsWholeTables(t *testing.T) {
	dir, _ := filledDB(t)
	db, err := Open(testOptions(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(txn *badger.Txn) error {
		_, err := txn.Get([]byte("tag/01999"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}
