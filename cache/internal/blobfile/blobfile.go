// Package blobfile is how blob bytes reach a local file fast and safely:
// copied and hashed in one pipeline (CopyHashing) through buffers from a
// process-wide budget (GetBuf), written back to disk while they still
// arrive (WriteBehind), kept out of a free-space reserve (Space), and made
// durable with fsync of the file and of the folder a rename or create
// changed (SyncDir).
//
// It is shared by the two writers of a blob folder, package cache's
// Store and the filesystem blob backend (cache/blobstore/fs), so that
// both keep the same fast paths and one buffer budget for the process.
package blobfile

import "os"

// SyncDir makes a rename or create in dir durable.
func SyncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
