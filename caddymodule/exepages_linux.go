package caddymodule

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// releaseExePages asks the kernel (madvise MADV_PAGEOUT) to take back the
// pages of this process's mappings of its own executable, and returns how
// many bytes of mappings it asked about. A clean page of the file (code,
// read-only data) is dropped and read again from the file on its next
// use; a page the process wrote (initialized data, copied on write) is
// anonymous memory, which without swap stays. Nothing changes but where
// the pages are, so a mapping that went away meanwhile does no harm.
func releaseExePages() (int64, error) {
	exe, err := os.Executable()
	if err == nil {
		exe, err = filepath.EvalSymlinks(exe)
	}
	if err != nil {
		return 0, err
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var asked int64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "start-end perms offset dev inode path"
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[5] != exe {
			continue
		}
		lo, hi, _ := strings.Cut(fields[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, uintptr(start), uintptr(end-start), unix.MADV_PAGEOUT); errno != 0 {
			if errno == unix.EINVAL && asked == 0 {
				return 0, errno // a kernel before 5.4
			}
			continue
		}
		asked += int64(end - start)
	}
	return asked, sc.Err()
}
