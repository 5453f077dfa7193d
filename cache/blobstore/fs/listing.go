package fs

import (
	"context"
	"errors"
	iofs "io/fs"
	"path/filepath"
	"strings"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
)

// Blobs implements blobstore.Lister: the files under blobs/ in path
// order; the cursor is the path (<alg>/<2 hex>/<hex>) to start after.
func (s *Store) Blobs(ctx context.Context, cursor string, n int) ([]blobstore.Listed, string, error) {
	if n <= 0 {
		n = 1000
	}
	var bs []blobstore.Listed
	next, last := "", ""
	err := filepath.WalkDir(s.blobsDir, func(path string, e iofs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, iofs.ErrNotExist) {
				return nil // gone since its folder was read
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(s.blobsDir, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if e.IsDir() {
			// WalkDir goes in lexical order: a folder wholly before the
			// cursor was listed already.
			if rel != "." && rel < cursor && !strings.HasPrefix(cursor, rel+"/") {
				return filepath.SkipDir
			}
			return nil
		}
		if rel <= cursor || !e.Type().IsRegular() {
			return nil
		}
		parts := strings.Split(rel, "/")
		if len(parts) != 3 {
			return nil
		}
		d, err := blobstore.ParseDigest(parts[0] + ":" + parts[2])
		if err != nil || d.Validate() != nil || parts[1] != d.Hex[:2] {
			return nil // not ours; leave it
		}
		if len(bs) == n {
			next = last
			return filepath.SkipAll
		}
		fi, err := e.Info()
		if err != nil {
			return nil // gone since the listing
		}
		bs = append(bs, blobstore.Listed{Digest: d, Since: fi.ModTime()})
		last = rel
		return nil
	})
	return bs, next, err
}

var _ blobstore.Lister = (*Store)(nil)
