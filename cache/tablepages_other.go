//go:build !linux

package cache

import "errors"

// releaseTablePages is Linux's only (madvise MADV_PAGEOUT).
func releaseTablePages(string, map[string]bool) (int64, error) {
	return 0, errors.New("releasing table pages needs Linux")
}

func inMemoryFS(string) bool { return false }
