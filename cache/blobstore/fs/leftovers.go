package fs

import (
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
)

// What writes leave in the folder when they do not finish: a session's
// file under uploads/ (made before the caller records the session, so a
// process killed in between leaves one nothing refers to), and a Put's
// temporary file under tmp/. Leftovers lists uploads/, then tmp/, in name
// order; the cursor is the folder's letter ("u" or "t") and the name to
// start after.

// Leftovers implements blobstore.Sweeper.
func (s *Store) Leftovers(ctx context.Context, cursor string, n int) ([]blobstore.Leftover, string, error) {
	if n <= 0 {
		n = 1000
	}
	dir, after := "u", ""
	if cursor != "" {
		dir, after = cursor[:1], cursor[1:]
	}
	var path, next string
	switch dir {
	case "u":
		path, next = s.uploadsDir, "t"
	case "t":
		path, next = s.tmpDir, ""
	default:
		return nil, "", fmt.Errorf("fs: leftovers: bad cursor %q", cursor)
	}
	des, err := os.ReadDir(path) // sorted by name
	if err != nil {
		return nil, "", fmt.Errorf("fs: leftovers: %w", err)
	}
	var ls []blobstore.Leftover
	last := ""
	for _, de := range des {
		if de.Name() <= after || !de.Type().IsRegular() {
			continue
		}
		if len(ls) == n {
			return ls, dir + last, nil
		}
		fi, err := de.Info()
		if err != nil {
			continue // gone since the listing
		}
		l := blobstore.Leftover{Since: fi.ModTime(), Key: filepath.Base(path) + "/" + de.Name()}
		if dir == "u" {
			l.Session = de.Name()
		}
		ls = append(ls, l)
		last = de.Name()
	}
	return ls, next, nil
}

// DropLeftover implements blobstore.Sweeper: it removes the file, which
// must be one Leftovers names.
func (s *Store) DropLeftover(ctx context.Context, l blobstore.Leftover) error {
	folder, name, ok := strings.Cut(l.Key, "/")
	if !ok || name == "" || strings.ContainsAny(name, `/\`) || name == "." || name == ".." {
		return fmt.Errorf("fs: leftover %q is not one", l.Key)
	}
	var path string
	switch folder {
	case "uploads":
		path = filepath.Join(s.uploadsDir, name)
	case "tmp":
		path = filepath.Join(s.tmpDir, name)
	default:
		return fmt.Errorf("fs: leftover %q is not one", l.Key)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, iofs.ErrNotExist) {
		return fmt.Errorf("fs: drop leftover: %w", err)
	}
	return nil
}

var _ blobstore.Sweeper = (*Store)(nil)
