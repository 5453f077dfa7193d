package blobfile

import (
	"errors"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

const canWriteDirect = true

// setODirect turns O_DIRECT on or off on f's open file.
func setODirect(f *os.File, on bool) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		var fl int
		fl, serr = unix.FcntlInt(fd, unix.F_GETFL, 0)
		if serr != nil {
			return
		}
		if on {
			fl |= unix.O_DIRECT
		} else {
			fl &^= unix.O_DIRECT
		}
		_, serr = unix.FcntlInt(fd, unix.F_SETFL, fl)
	}); err != nil {
		return err
	}
	return serr
}

// isDirectRefused: the error a filesystem gives a direct write it cannot
// do (alignment it wants larger, or no direct I/O at all).
func isDirectRefused(err error) bool {
	return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP)
}

func aligned(q []byte) bool {
	return len(q) > 0 && uintptr(unsafe.Pointer(unsafe.SliceData(q)))%directAlign == 0
}
