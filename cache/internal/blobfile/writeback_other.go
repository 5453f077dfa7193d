//go:build !linux

package blobfile

import "os"

// canWriteBehind: only Linux has sync_file_range; elsewhere the final
// fsync writes the whole file.
const canWriteBehind = false

func startWriteback(*os.File, int64, int64) error { return nil }

func waitWriteback(*os.File, int64, int64) error { return nil }
