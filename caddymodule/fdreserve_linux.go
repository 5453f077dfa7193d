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

// fdsFree reports whether n file descriptors are free below the
// process's limit: two system calls (fcntl and close) when they are.
func fdsFree(n int) bool {
	f := probeFile()
	var lim syscall.Rlimit
	if f == nil || syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) != nil || lim.Cur > 1<<30 {
		return true // nothing to go by
	}
	floor := int64(lim.Cur) - int64(n)
	if floor <= 0 {
		return false
	}
	fd, _, errno := syscall.Syscall(syscall.SYS_FCNTL, f.Fd(), syscall.F_DUPFD_CLOEXEC, uintptr(floor))
	if errno != 0 {
		return false // EMFILE: none free at or above floor
	}
	syscall.Close(int(fd))
	return int64(fd) == floor
}
