// Package configfile reads the files a config names (passwords, secrets,
// keys, CA bundles, htpasswd and credentials files) as hostile input: a
// path the config got wrong, or one an attacker with a say in the config
// chose, must fail loading with a clear error, never hang it on a pipe
// nor fill memory from /dev/zero or a file of gigabytes.
package configfile

import (
	"fmt"
	"io"
	"os"
	"syscall"
)

// MaxSize bounds a config file: room for an htpasswd of about 500,000
// bcrypt users (about 65 bytes a line) or any CA bundle, far below what
// would hurt the process.
const MaxSize = 32 << 20

// Read returns the content of the regular file at path (symbolic links
// followed, as Kubernetes mounts secrets), refusing anything else (a
// device, a pipe, a folder) and a file of more than MaxSize bytes.
func Read(path string) ([]byte, error) {
	// Non-blocking, so that opening a pipe does not wait for a writer;
	// it makes no difference to a regular file.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%s)", path, fi.Mode().Type())
	}
	if fi.Size() > MaxSize {
		return nil, fmt.Errorf("%s is %d bytes, more than the %d a config file may have", path, fi.Size(), MaxSize)
	}
	// The size again as read: the file may have grown since Stat.
	data, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxSize {
		return nil, fmt.Errorf("%s has more than the %d bytes a config file may have", path, MaxSize)
	}
	return data, nil
}
