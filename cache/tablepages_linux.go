package cache

import (
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/caddy-oci/caddy-oci/internal/pageout"
)

// pagedFile reports whether path is one of badger's files whose pages
// are handed back: its tables (.sst) and its value logs (.vlog), which
// hold the values over ValueThreshold (large manifests) and, like the
// tables, are written and read through mappings: 100 pushes of 4 MiB
// manifests at once left about 330 MiB of value log pages resident.
func pagedFile(path string) bool {
	ext := filepath.Ext(path)
	return ext == ".sst" || ext == ".vlog"
}

// releaseTablePages asks the kernel to take back the pages of this
// process's mappings of the .sst and .vlog files in dir (see package
// pageout), and returns how many bytes of mappings it asked about. With done not nil
// it asks only about tables not in done that were last written at least
// tableSettled ago (a table being written now would only be faulted back
// in by its writer), adds those to done, and drops from done the tables
// no longer mapped; nil asks about every table.
func releaseTablePages(dir string, done map[string]bool) (int64, error) {
	now := time.Now()
	mapped := map[string]bool{}
	ms, err := pageout.Mappings(func(path string) bool {
		if filepath.Dir(path) != dir || !pagedFile(path) {
			return false
		}
		if done == nil {
			return true
		}
		mapped[path] = true
		if done[path] {
			return false
		}
		info, err := os.Stat(path)
		return err == nil && now.Sub(info.ModTime()) >= tableSettled // else gone, or still being written: next round
	})
	if err != nil {
		return 0, err
	}
	asked, err := pageout.Release(ms, func(m pageout.Mapping) {
		if done != nil {
			done[m.Path] = true
		}
	})
	for path := range done {
		if !mapped[path] {
			delete(done, path)
		}
	}
	return asked, err
}

// inMemoryFS reports whether dir is on tmpfs.
func inMemoryFS(dir string) bool {
	var fs unix.Statfs_t
	return unix.Statfs(dir, &fs) == nil && fs.Type == unix.TMPFS_MAGIC
}
