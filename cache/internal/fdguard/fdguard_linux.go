package fdguard

import (
	"fmt"
	"os"
	"sync"
	"syscall"
)

// probeFile is a descriptor kept open to duplicate: admit asks the kernel
// for a copy numbered at least limit-Headroom and gets the lowest free
// number from there. Numbers are handed out lowest first, so a free one
// near limit-Headroom means about that many are free. One descriptor per
// check: checks at once do not take each other's room, as opening
// Headroom files each did.
var probeFile = sync.OnceValue(func() *os.File {
	f, _ := os.Open(os.DevNull)
	return f
})

// maxProbedFD bounds the number asked for: the kernel grows the process's
// descriptor table to it (8 bytes a slot). Past it the headroom is kept
// below this number.
const maxProbedFD = 1 << 17

func admit() error {
	f := probeFile()
	var lim syscall.Rlimit
	if f == nil || syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) != nil {
		return nil // nothing to go by
	}
	floor := int64(min(lim.Cur, maxProbedFD)) - Headroom
	if floor <= 0 {
		return nil // a limit that small leaves nothing to keep
	}
	fd, _, errno := syscall.Syscall(syscall.SYS_FCNTL, f.Fd(), syscall.F_DUPFD_CLOEXEC, uintptr(floor))
	if errno != 0 {
		return fmt.Errorf("fewer than %d file descriptors free: %w", Headroom, errno)
	}
	syscall.Close(int(fd))
	// Checks at once hold floor, floor+1, ... for a moment each: a
	// number a little above floor is another check's, not a shortage.
	if int64(fd) >= floor+Headroom/2 {
		return fmt.Errorf("fewer than %d file descriptors free: %w", Headroom, syscall.EMFILE)
	}
	return nil
}
