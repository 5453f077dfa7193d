//go:build !linux

package blobfile

import "os"

// canWriteDirect: O_DIRECT through fcntl is Linux's; elsewhere writes are
// buffered (WriteBehind).
const canWriteDirect = false

func setODirect(*os.File, bool) error { return nil }

func isDirectRefused(error) bool { return false }

func aligned([]byte) bool { return false }
