package registry

import (
	"context"
	"io"

	"golang.org/x/sync/semaphore"
)

// Why manifest work takes turns by size:
//
// A manifest is read, hashed, decoded (its annotations become strings),
// turned into the store's record (the annotations again) and written, all
// in memory: about five times its size at once, with garbage besides. A
// manifest may be megabytes (max_manifest_size; annotations make it so),
// and nothing else bounds how many are handled at once: 64 pushes of
// 4 MiB manifests at once grew the server's peak RSS by 1.3 GiB. The work
// after the body is read therefore holds its size against a budget shared
// by the process, and waits while the budget is spent. Reading the body
// does not hold it: a client that trickles its manifest in would
// otherwise keep others waiting; what it costs is the bytes it has sent.
// Small manifests (kilobytes, nearly all of them) never wait in practice.

// manifestWorkBudget is how many bytes of manifests are decoded and stored
// at once across the process; a larger manifest takes all of it.
const manifestWorkBudget = 16 << 20

var manifestWork = semaphore.NewWeighted(manifestWorkBudget)

// holdManifestWork waits until size bytes of manifest work may run and
// returns the release; an error when ctx ends first.
func holdManifestWork(ctx context.Context, size int64) (func(), error) {
	n := min(max(size, 1), manifestWorkBudget)
	if err := manifestWork.Acquire(ctx, n); err != nil {
		return nil, err
	}
	return func() { manifestWork.Release(n) }, nil
}

// readManifestBody reads at most limit+1 bytes of body (one more tells
// "too large"). With a declared length it reads into one buffer of that
// size, instead of io.ReadAll's doubling copies.
func readManifestBody(body io.Reader, declared, limit int64) ([]byte, error) {
	if declared < 0 || declared > limit {
		return io.ReadAll(io.LimitReader(body, limit+1))
	}
	buf := make([]byte, declared+1) // the extra byte catches a longer body
	n, err := io.ReadFull(body, buf)
	switch err {
	case io.ErrUnexpectedEOF, io.EOF:
		return buf[:n], nil // the body ended: its length is n
	case nil:
		// Longer than declared (net/http stops a body at its length, so
		// not from it): the rest, up to the limit.
		rest, err := io.ReadAll(io.LimitReader(body, limit+1-int64(n)))
		return append(buf, rest...), err
	}
	return nil, err
}
