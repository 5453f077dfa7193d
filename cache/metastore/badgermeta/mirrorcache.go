package badgermeta

// The mirror cache's records (metastore.MirrorCache):
//
//	bu/<digest>   last read (unix ns), beside the blob record
//	mc            bytes of mirrored content (int64)
//
// An eviction reads the blob record and its last use, so a link (which
// rewrites the record) or a use recorded meanwhile makes it run again
// and see them.

import (
	"context"
	"encoding/binary"
	"slices"
	"strings"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/metastore"
	badger "github.com/dgraph-io/badger/v4"
)

var mirrorBytesKey = []byte("mc")

// RecordUses moves the last use of each blob forward.
func (s *Store) RecordUses(ctx context.Context, uses map[metastore.Digest]time.Time) error {
	for d := range uses {
		if err := metastore.CheckDigest("blob", d); err != nil {
			return err
		}
	}
	if len(uses) == 0 {
		return nil
	}
	return s.update(ctx, func(txn *badger.Txn) error {
		for d, at := range uses {
			r, ok, err := readBlob(txn, d)
			if err != nil {
				return err
			}
			if !ok || r.deleting {
				continue
			}
			uk := key("bu/", d.String())
			v, _, err := get(txn, uk)
			if err != nil {
				return err
			}
			if at.After(fromNano(v)) {
				if err := txn.Set(uk, unixNano(at)); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// lastUse is the later of d's record's touch and its last read.
func lastUse(txn *badger.Txn, d string, r blobRecord) (time.Time, error) {
	v, _, err := get(txn, key("bu/", d))
	return later(r.touched, fromNano(v)), err
}

// BlobUses lists blob records with their last use and links.
func (s *Store) BlobUses(ctx context.Context, after metastore.Digest, n int) ([]metastore.BlobUse, error) {
	cur := ""
	if !after.IsZero() {
		cur = after.String()
	}
	var out []metastore.BlobUse
	err := s.view(ctx, func(txn *badger.Txn) error {
		return each(txn, []byte("b/"), cur, func(ds string, _ []byte) (bool, error) {
			if n >= 0 && len(out) >= n {
				return false, nil
			}
			d, err := parseDigest(ds)
			if err != nil {
				return false, err
			}
			r, ok, err := readBlob(txn, d)
			if err != nil || !ok || r.deleting {
				return err == nil, err
			}
			u := metastore.BlobUse{BlobRecord: r.record(d), Manifest: hasPrefix(txn, prefixOf("mr/", ds))}
			if u.Used, err = lastUse(txn, ds, r); err != nil {
				return false, err
			}
			p, err := page(txn, prefixOf("lr/", ds), "", -1)
			u.Repos = p.Names
			out = append(out, u)
			return err == nil, err
		})
	})
	return out, err
}

// evictLinkBudget is how many links one transaction of EvictBlobs
// removes. badger refuses a transaction past a size its memtable sets (a
// few thousand writes), and a layer may be linked by thousands of mirrored
// repositories: a batch is cut into transactions by its links, and a blob
// with more links than the budget loses them over several, its eviction
// decided in the last (a link removed before another repository's link
// kept the blob is a mirror's cache entry, fetched again when pulled).
const evictLinkBudget = 1000

// EvictBlobs unlinks and marks the blobs of es that are still mirrored
// only and unused since.
func (s *Store) EvictBlobs(ctx context.Context, es []metastore.Eviction) ([]metastore.BlobRecord, error) {
	for _, e := range es {
		if err := metastore.CheckDigest("blob", e.Digest); err != nil {
			return nil, err
		}
	}
	marked := []metastore.BlobRecord{}
	for len(es) > 0 {
		var done int // evictions of es decided by the transaction
		var now []metastore.BlobRecord
		err := s.update(ctx, func(txn *badger.Txn) error {
			done, now = 0, now[:0]
			budget := evictLinkBudget
			for _, e := range es {
				ds := e.Digest.String()
				r, ok, err := readBlob(txn, e.Digest)
				if err != nil {
					return err
				}
				if !ok || r.deleting || hasPrefix(txn, prefixOf("mr/", ds)) {
					done++
					continue
				}
				used, err := lastUse(txn, ds, r)
				if err != nil {
					return err
				}
				if used.After(e.Used) {
					done++
					continue
				}
				p, err := page(txn, prefixOf("lr/", ds), "", -1)
				if err != nil {
					return err
				}
				if !e.AllowsLinks(p.Names) {
					done++
					continue
				}
				if len(p.Names) > budget {
					if done > 0 {
						return nil // the next transaction starts with e
					}
					for _, repo := range p.Names[:budget] {
						if err := deleteKeys(txn, key("l/", repo, ds), key("lr/", ds, repo)); err != nil {
							return err
						}
					}
					return nil // e is decided once its last links go
				}
				budget -= len(p.Names)
				for _, repo := range p.Names {
					if err := deleteKeys(txn, key("l/", repo, ds), key("lr/", ds, repo)); err != nil {
						return err
					}
				}
				r.deleting = true
				if err := txn.Set(key("b/", ds), r.bytes()); err != nil {
					return err
				}
				if err := txn.Set(key("bd/", ds), nil); err != nil {
					return err
				}
				now = append(now, r.record(e.Digest))
				done++
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		marked = append(marked, now...)
		es = es[done:]
	}
	slices.SortFunc(marked, func(a, b metastore.BlobRecord) int { return strings.Compare(a.Digest.String(), b.Digest.String()) })
	return marked, nil
}

// AddMirrorBytes changes the figure of mirrored bytes.
func (s *Store) AddMirrorBytes(ctx context.Context, n int64) (int64, error) {
	var total int64
	read := func(txn *badger.Txn) error {
		v, _, err := get(txn, mirrorBytesKey)
		if len(v) == 8 {
			total = int64(binary.BigEndian.Uint64(v))
		}
		return err
	}
	if n == 0 {
		return total, s.view(ctx, read)
	}
	err := s.update(ctx, func(txn *badger.Txn) error {
		if err := read(txn); err != nil {
			return err
		}
		total = max(0, total+n)
		return txn.Set(mirrorBytesKey, binary.BigEndian.AppendUint64(nil, uint64(total)))
	})
	return total, err
}
