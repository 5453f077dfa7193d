package fdprobe

import (
	"os"
	"sync"
	"syscall"
)

// probeFile is a descriptor kept open to duplicate.
var probeFile = sync.OnceValue(func() *os.File {
	f, _ := os.Open(os.DevNull)
	return f
})

// Free reports whether n file descriptors are free below the process's
// limit, give or take slack. It asks the kernel for a copy of a probe
// descriptor numbered at least limit-n, which the kernel gives only when
// such a number is free, and the lowest one free from there. Numbers are
// handed out lowest first, so the top n being free means n are free
// (holes below only make it stricter). A copy numbered within slack above
// limit-n counts as free too: checks running at once hold limit-n,
// limit-n+1, ... for a moment each, and that is not a shortage. A limit
// too small to leave n, or one that cannot be read, says nothing: true.
func Free(n, slack int) bool {
	f := probeFile()
	var lim syscall.Rlimit
	if f == nil || syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) != nil {
		return true
	}
	floor := int64(min(lim.Cur, maxProbedFD)) - int64(n)
	if floor <= 0 {
		return true
	}
	fd, _, errno := syscall.Syscall(syscall.SYS_FCNTL, f.Fd(), syscall.F_DUPFD_CLOEXEC, uintptr(floor))
	if errno != 0 {
		return false // EMFILE: none free at or above floor
	}
	syscall.Close(int(fd))
	return int64(fd) < floor+int64(slack)
}
