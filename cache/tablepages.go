package cache

import (
	"path/filepath"
	"time"

	"go.uber.org/zap"
)

// tablePagesEvery is how often the store hands the pages of badger's
// table files back to the kernel (tablepages_linux.go).
const tablePagesEvery = 10 * time.Second

// tablePagesLoop releases the resident pages of the metadata's table
// files every tablePagesEvery. Badger (v4) always memory-maps its tables
// (it has no option to read them with plain file I/O any more) and writes
// and compacts them through those mappings, so every page of every table
// it wrote or compacted stays in the process's RSS: about 1 KiB per image
// stored, 48 MiB at 50,000 images, growing with the store for as long as
// the kernel has no other use for the memory. Released pages are read
// back from the page cache or the disk the next time a lookup needs them.
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
	t := time.NewTicker(tablePagesEvery)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		if _, err := releaseTablePages(dir); err != nil {
			// An old kernel (before 5.4) or no /proc: RSS keeps the pages,
			// as it did before.
			s.log.Debug("not releasing table pages", zap.Error(err))
			return
		}
	}
}
