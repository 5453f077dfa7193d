package cache

import (
	"path/filepath"
	"time"

	"go.uber.org/zap"
)

const (
	// tablePagesEvery is how often the store hands the pages of all of
	// badger's table files back to the kernel (tablepages_linux.go):
	// what lookups read back in.
	tablePagesEvery = 10 * time.Second
	// tablePagesNew is how often it looks for tables written since the
	// last look and hands back theirs: a flush or compaction writes a
	// table whole through its mapping, so every page of it is resident
	// the moment it is written, and while compactions run that is tens
	// of MiB within a few seconds (the peak RSS of a growing store).
	// One read of /proc/self/maps a round; a stat per new table.
	tablePagesNew = 500 * time.Millisecond
	// tableSettled is how long a table file must have been left alone
	// before its pages are handed back: one being written would be
	// faulted straight back in by its writer.
	tableSettled = 250 * time.Millisecond
)

// tablePagesLoop releases the resident pages of the metadata's table
// files every tablePagesEvery, and those of new tables within
// tablePagesNew of their writing. Badger (v4) always memory-maps its tables
// (it has no option to read them with plain file I/O any more) and writes
// and compacts them through those mappings, so every page of every table
// it wrote or compacted stays in the process's RSS: about 1 KiB per image
// stored, 48 MiB at 50,000 images, growing with the store for as long as
// the kernel has no other use for the memory. The value log, which holds
// the values over ValueThreshold (large manifests), is written and read
// through mappings the same way, and is released with the tables.
// Released pages are read back from the page cache or the disk the next
// time a lookup needs them.
func (s *Store) tablePagesLoop(metaDir string) {
	defer s.wg.Done()
	dir, err := filepath.Abs(metaDir)
	if err == nil {
		dir, err = filepath.EvalSymlinks(dir)
	}
	if err != nil {
		s.log.Debug("not releasing table pages", zap.Error(err))
		return
	}
	if inMemoryFS(dir) {
		return // tmpfs: the pages are the files; paging them out means swap
	}
	t := time.NewTicker(tablePagesNew)
	defer t.Stop()
	done := map[string]bool{}
	for round := 1; ; round++ {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		if round%int(tablePagesEvery/tablePagesNew) == 0 {
			clear(done) // all of them again
		}
		if _, err := releaseTablePages(dir, done); err != nil {
			// An old kernel (before 5.4) or no /proc: RSS keeps the pages,
			// as it did before.
			s.log.Debug("not releasing table pages", zap.Error(err))
			return
		}
	}
}
