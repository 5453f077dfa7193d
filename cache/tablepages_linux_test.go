package cache

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"golang.org/x/sys/unix"

	"github.com/caddy-oci/caddy-oci/internal/pageout"
)

// residentTableBytes is the resident memory (Rss in /proc/self/smaps) of
// this process's mappings of .sst files in dir.
func residentTableBytes(t *testing.T, dir string) int64 {
	t.Helper()
	return residentBytes(t, dir, ".sst")
}

// residentBytes is the resident memory of this process's mappings of
// the files in dir whose names end in ext.
func residentBytes(t *testing.T, dir, ext string) int64 {
	t.Helper()
	n, err := pageout.Resident(func(path string) bool {
		return filepath.Dir(path) == dir && filepath.Ext(path) == ext
	})
	if err != nil {
		t.Fatalf("smaps: %v", err)
	}
	return n
}

// The pages of the metadata's tables that lookups and compactions made
// resident leave the process's RSS when released, and every key still
// reads back as written.
func TestReleaseTablePages(t *testing.T) {
	dir, meta := pagedStoreDir(t)
	const keys = 40000
	value := func(i int) []byte { return []byte(fmt.Sprintf("value %d %s", i, bytes.Repeat([]byte{'x'}, 100))) }
	s := openStore(t, Options{Dir: dir})
	for i := 0; i < keys; i += 1000 {
		err := s.update(func(txn *badger.Txn) error {
			for j := i; j < i+1000; j++ {
				if err := txn.Set([]byte(fmt.Sprintf("test/%08d", j)), value(j)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// Reopened, the memtable is a table on disk, mapped. Without the
	// background release: it would race what this test measures (a tick
	// during a slow read under -race released the tables before the
	// "resident after reading" check).
	s.Close()
	s = openStore(t, Options{Dir: dir, keepTablePages: true})
	readAll := func() {
		t.Helper()
		n := 0
		err := s.db.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("test/"), PrefetchValues: false})
			defer it.Close()
			for it.Rewind(); it.Valid(); it.Next() {
				v, err := it.Item().ValueCopy(nil)
				if err != nil {
					return err
				}
				if !bytes.Equal(v, value(n)) {
					return fmt.Errorf("key %q = %q", it.Item().Key(), v)
				}
				n++
			}
			return nil
		})
		if err != nil || n != keys {
			t.Fatalf("read %d of %d keys: %v", n, keys, err)
		}
	}
	readAll()
	before := residentTableBytes(t, meta)
	if before < 1<<20 {
		t.Fatalf("only %d bytes of tables resident after reading them all", before)
	}
	asked, err := releaseTablePages(meta, nil)
	if errors.Is(err, unix.EINVAL) {
		t.Skip("madvise MADV_PAGEOUT not supported by this kernel (Linux >= 5.4)")
	}
	// Not asked >= before: a compaction may replace tables in between.
	if err != nil || asked == 0 {
		t.Fatalf("releaseTablePages = %d, %v (resident before: %d)", asked, err, before)
	}
	// MADV_PAGEOUT is advice: pages badger's own goroutines touch
	// meanwhile, or the kernel keeps for its reasons, may stay (28% did
	// once, under -race on a busy machine). The background loop asks
	// again every round; so does this test, a few times.
	after := residentTableBytes(t, meta)
	for try := 1; try < 4 && after > before/4; try++ {
		if _, err := releaseTablePages(meta, nil); err != nil {
			t.Fatal(err)
		}
		after = residentTableBytes(t, meta)
	}
	t.Logf("tables resident: %d KiB before, %d KiB after", before>>10, after>>10)
	if after > before/2 {
		t.Errorf("tables resident: %d bytes before, %d after release; want most of it gone", before, after)
	}
	readAll()
}

// The value log's pages (values over ValueThreshold: large manifests)
// that reads made resident leave the RSS when released too, and every
// value still reads back as written.
func TestReleaseValueLogPages(t *testing.T) {
	dir, meta := pagedStoreDir(t)
	const values, size = 64, 256 << 10 // 16 MiB, each value past the threshold
	value := func(i int) []byte { return bytes.Repeat([]byte{byte('a' + i%26)}, size) }
	s := openStore(t, Options{Dir: dir})
	for i := range values {
		if err := s.update(func(txn *badger.Txn) error { return txn.Set([]byte(fmt.Sprintf("big/%04d", i)), value(i)) }); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	s = openStore(t, Options{Dir: dir, keepTablePages: true})
	readAll := func() {
		t.Helper()
		for i := range values {
			err := s.db.View(func(txn *badger.Txn) error {
				item, err := txn.Get([]byte(fmt.Sprintf("big/%04d", i)))
				if err != nil {
					return err
				}
				v, err := item.ValueCopy(nil)
				if err == nil && !bytes.Equal(v, value(i)) {
					err = fmt.Errorf("value %d changed", i)
				}
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	readAll()
	before := residentBytes(t, meta, ".vlog")
	if before < values*size/2 {
		t.Fatalf("only %d bytes of the value log resident after reading %d bytes of values", before, values*size)
	}
	asked, err := releaseTablePages(meta, nil)
	if errors.Is(err, unix.EINVAL) {
		t.Skip("madvise MADV_PAGEOUT not supported by this kernel (Linux >= 5.4)")
	}
	if err != nil || asked == 0 {
		t.Fatalf("releaseTablePages = %d, %v (value log resident before: %d)", asked, err, before)
	}
	after := residentBytes(t, meta, ".vlog")
	for try := 1; try < 4 && after > before/4; try++ {
		if _, err := releaseTablePages(meta, nil); err != nil {
			t.Fatal(err)
		}
		after = residentBytes(t, meta, ".vlog")
	}
	t.Logf("value log resident: %d KiB before, %d KiB after", before>>10, after>>10)
	if after > before/2 {
		t.Errorf("value log resident: %d bytes before, %d after release; want most of it gone", before, after)
	}
	readAll()
}

// Tables badger has just written (flushed memtables, compactions) leave
// the RSS within a second or so, not at the next full release: written
// through their mappings, they are resident whole the moment they exist.
func TestNewTablePagesReleasedSoon(t *testing.T) {
	dir, meta := pagedStoreDir(t)
	if _, err := releaseTablePages(t.TempDir(), nil); errors.Is(err, unix.EINVAL) {
		t.Skip("madvise MADV_PAGEOUT not supported by this kernel (Linux >= 5.4)")
	}
	s := openStore(t, Options{Dir: dir})
	// More than two memtables' worth (4 MiB each): flushed to tables.
	value := bytes.Repeat([]byte{'x'}, 200)
	for i := 0; i < 60000; i += 1000 {
		err := s.update(func(txn *badger.Txn) error {
			for j := i; j < i+1000; j++ {
				if err := txn.Set([]byte(fmt.Sprintf("test/%08d", j)), value); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	tables, _ := filepath.Glob(filepath.Join(meta, "*.sst"))
	var size int64
	for _, p := range tables {
		if info, err := os.Stat(p); err == nil {
			size += info.Size()
		}
	}
	if size < 4<<20 {
		t.Fatalf("only %d bytes of tables written", size)
	}
	// Well under tablePagesEvery: only the look for new tables can do it.
	deadline := time.Now().Add(3 * time.Second)
	resident := residentTableBytes(t, meta)
	for resident > size/4 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		resident = residentTableBytes(t, meta)
	}
	t.Logf("tables: %d KiB written, %d KiB resident", size>>10, resident>>10)
	if resident > size/4 {
		t.Errorf("%d of %d bytes of new tables still resident after 3 s", resident, size)
	}
}

// A table once released is not asked about again until the next full
// release, and one written moments ago is left to its writer.
func TestReleaseTablePagesOnlyNew(t *testing.T) {
	dir := t.TempDir()
	meta, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	meta = filepath.Join(meta, "meta")
	s := openStore(t, Options{Dir: dir})
	err = s.update(func(txn *badger.Txn) error { return txn.Set([]byte("test/a"), []byte("b")) })
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	openStore(t, Options{Dir: dir}) // the memtable is a table now
	tables, _ := filepath.Glob(filepath.Join(meta, "*.sst"))
	if len(tables) == 0 {
		t.Fatal("no table written")
	}
	now := time.Now()
	for _, p := range tables {
		if err := os.Chtimes(p, now, now); err != nil {
			t.Fatal(err)
		}
	}
	done := map[string]bool{"/gone/000001.sst": true}
	asked, err := releaseTablePages(meta, done)
	if errors.Is(err, unix.EINVAL) {
		t.Skip("madvise MADV_PAGEOUT not supported by this kernel (Linux >= 5.4)")
	}
	if err != nil || asked != 0 || len(done) != 0 {
		t.Fatalf("tables just written: asked %d, done %v, %v; want none asked, none done", asked, done, err)
	}
	old := now.Add(-time.Second)
	for _, p := range tables {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	if asked, err := releaseTablePages(meta, done); err != nil || asked == 0 || len(done) != len(tables) {
		t.Fatalf("settled tables: asked %d, done %v, %v; want all %d", asked, done, err, len(tables))
	}
	if asked, err := releaseTablePages(meta, done); err != nil || asked != 0 {
		t.Fatalf("again: asked %d, %v; want 0", asked, err)
	}
}

// pagedStoreDir is a store folder for the tests of released pages, and
// the path its metadata's mappings show in /proc (symlinks resolved);
// the test is skipped on tmpfs, whose pages are memory: without swap
// there is nowhere to page them out to.
func pagedStoreDir(t *testing.T) (dir, meta string) {
	t.Helper()
	dir = t.TempDir()
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	if inMemoryFS(dir) {
		t.Skip("the temp folder is on tmpfs, whose pages cannot be paged out without swap")
	}
	return dir, filepath.Join(real, "meta")
}
