package caddymodule

import (
	"os"
	"sync"
	"syscall"
)

// probeFile is a descriptor kept open to duplicate: fdsFree asks the
// kernel for a copy numbered at least limit-n, which it gives only when
// such a number is free. Numbers are handed out lowest first, so the top
// n being free means n are free (holes below only make it stricter).
var probeFile = sync.OnceValue(func() *os.File {
	f, _ := os.Open(os.DevNull)
	return f
})

// maxProbedFD bounds the number fdsFree asks for: the kernel grows the
// process's descriptor table to the highest number asked (8 bytes a
// slot), and a limit of a million (Docker's) would cost 8 MiB. Past it
// the reserve is kept below this number instead: at most about 131,000
// connections, and most of a million descriptors still free.
const maxProbedFD = 1 << 17

// fdsFree reports whether n file descriptors are free below the
// process's limit: three system calls (getrlimit, fcntl and close).
func fdsFree(n int) bool {
	f := probeFile()
	var lim syscall.Rlimit
	if f == nil || syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) != nil {
		return true // nothing to go by
	}
	floor := int64(min(lim.Cur, maxProbedFD)) - int64(n)
	if floor <= 0 {
		return false
	}
	fd, _, errno := syscall.Syscall(syscall.SYS_FCNTL, f.Fd(), syscall.F_DUPFD_CLOEXEC, uintptr(floor))
	if errno != 0 {
		return false // EMFILE: none free at or above floor
	}
	syscall.Close(int(fd))
	// Listeners that check at once hold floor, floor+1, ... for a moment.
	return int64(fd) < floor+8
}
