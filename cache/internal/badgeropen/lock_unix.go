//go:build unix

package badgeropen

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
)

// inUse reports whether another open of the database holds its LOCK
// file (badger takes an exclusive flock on it). Its tables may then be
// compacted away under the check, and badger.Open refuses the folder
// anyway, with its own message.
func inUse(dir string) bool {
	f, err := os.Open(filepath.Join(dir, "LOCK"))
	if err != nil {
		return false // no lock file: nobody has it open
	}
	defer f.Close()
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB)
	if err == nil {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		return false
	}
	return errors.Is(err, syscall.EWOULDBLOCK)
}
