package caddymodule

import (
	"os"
	"path/filepath"

	"github.com/caddy-oci/caddy-oci/internal/pageout"
)

// releaseExePages asks the kernel to take back the pages of this
// process's mappings of its own executable (see package pageout), and
// returns how many bytes of mappings it asked about. A clean page of the
// file (code, read-only data) is read again from the file on its next
// use; a page the process wrote (initialized data, copied on write) is
// anonymous memory, which without swap stays.
func releaseExePages() (int64, error) {
	exe, err := os.Executable()
	if err == nil {
		exe, err = filepath.EvalSymlinks(exe)
	}
	if err != nil {
		return 0, err
	}
	ms, err := pageout.Mappings(func(path string) bool { return path == exe })
	if err != nil {
		return 0, err
	}
	return pageout.Release(ms, nil)
}
