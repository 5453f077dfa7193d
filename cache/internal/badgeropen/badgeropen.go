// Package badgeropen opens a badger database after checking the tables
// its MANIFEST names, so that a table damaged on disk is an error that
// names it instead of a panic.
//
// A crash on a disk that does not keep the order of writes (no barriers,
// a volatile write cache) can leave a table that badger's MANIFEST lists
// cut short or with zeroed pages. badger opens each table in a goroutine
// of its own and reads the table's footer without bounds: a cut or zeroed
// footer panics there ("slice bounds out of range"), where no caller can
// recover, and the process dies at every start with a stack trace deep in
// badger. A table whose footer and index read but whose data blocks do
// not match their checksums is opened without a word (badger checks
// blocks only when asked to), and reads serve whatever a damaged block
// decodes to. Both are refused here before badger opens anything.
package badgeropen

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/dgraph-io/badger/v4/table"
	"github.com/dgraph-io/ristretto/v2/z"
)

// ErrDamaged is returned (wrapped) when a table the database lists
// cannot be read whole.
var ErrDamaged = errors.New("metadata table damaged")

// Open checks the tables opts.Dir's MANIFEST lists, then opens the
// database with badger.Open.
func Open(opts badger.Options) (*badger.DB, error) {
	if err := CheckTables(opts); err != nil {
		return nil, err
	}
	return badger.Open(opts)
}

// CheckTables reads every table the MANIFEST in opts.Dir lists, footer,
// index and the checksum of every block, and returns ErrDamaged naming
// the first that does not read. A folder without a MANIFEST (new), or
// whose MANIFEST does not parse, or that another open holds, is left to
// badger.Open, which creates it or reports it.
func CheckTables(opts badger.Options) error {
	if inUse(opts.Dir) {
		return nil
	}
	f, err := os.Open(filepath.Join(opts.Dir, badger.ManifestFilename))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return nil // badger.Open says why
	}
	m, _, err := badger.ReplayManifestFile(f, opts.ExternalMagicVersion, opts)
	f.Close()
	if err != nil {
		return nil
	}
	for id, tm := range m.Tables {
		if tm.KeyID != 0 {
			continue // encrypted: its data key is in the key registry
		}
		if err := checkTable(table.NewFilename(id, opts.Dir), tm.Compression, opts); err != nil {
			return err
		}
	}
	return nil
}

// checkTable opens one table read-only and verifies it whole; a panic of
// badger's table code on a damaged footer is recovered here and returned
// as ErrDamaged.
func checkTable(path string, compression options.CompressionType, opts badger.Options) (err error) {
	mf, err := z.OpenMmapFile(path, os.O_RDONLY, 0)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrDamaged, path, err)
	}
	// OpenTable leaves mf open on its errors and panics; this closes it
	// once whatever happens.
	defer mf.Close(-1)
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %s (%d bytes): it does not read (cut short or overwritten)", ErrDamaged, path, len(mf.Data))
		}
	}()
	t, err := table.OpenTable(mf, table.Options{
		ReadOnly:    true,
		ChkMode:     options.NoVerification, // VerifyChecksum below, so no path closes mf itself
		BlockSize:   opts.BlockSize,
		Compression: compression,
	})
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrDamaged, path, err)
	}
	if err := t.VerifyChecksum(); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrDamaged, path, err)
	}
	return nil
}
