//go:build !linux

package caddymodule

import "errors"

// releaseExePages is Linux's only (madvise MADV_PAGEOUT).
func releaseExePages() (int64, error) {
	return 0, errors.New("releasing the executable's pages needs Linux")
}
