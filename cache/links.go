package cache

// Blob links no manifest references. A repository links a blob when it is
// pushed, mounted or fetched into it, and deleting a manifest leaves the
// links of what it referenced; GC drops a link once no manifest the
// repository links references it and the link is older than the grace
// period, and the blob sweep after it frees what no repository links any
// more.
//
// A link's time is when it was made, renewed by every new link of the
// same blob (a push of it again, a mount) and by asking for it (HasBlob,
// at most once per half grace period: renewLink). That covers a push in
// progress, whose blobs come first and whose manifest may come minutes
// later, and a mirror's blob fetched by digest before any manifest that
// references it: both are ordinary states that the grace period protects.
// Mirrored links are evicted by size as well (evict.go); either removal
// re-checks under gcMu before it deletes, so they never step on each other.
//
// Links written before links had a time carry none. GC stamps such a link
// with the time it first sees it unreferenced and counts the grace period
// from there, so an upgrade never drops the links of a push in flight.
//
// What a repository references is read from its manifests' bytes (the
// store keeps no list of them) on every pass, one repository at a time,
// so memory follows the largest repository, not the store.

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"go.uber.org/zap"
)

const (
	// linkRepoBatch: repositories listed per read of the catalogue.
	linkRepoBatch = 256
	// linkDropBatch: links dropped per transaction (and per hold of gcMu).
	linkDropBatch = 256
)

// manifestRefs is every field of a manifest that names other content:
// image manifests (config, layers), indexes (manifests), the draft
// artifact manifest (blobs), Docker schema 1 (fsLayers) and subject.
// Reading more than the registry checks can only keep more links.
type manifestRefs struct {
	Config    *refDesc  `json:"config"`
	Layers    []refDesc `json:"layers"`
	Manifests []refDesc `json:"manifests"`
	Blobs     []refDesc `json:"blobs"`
	Subject   *refDesc  `json:"subject"`
	FSLayers  []struct {
		BlobSum string `json:"blobSum"`
	} `json:"fsLayers"`
}

type refDesc struct {
	Digest string `json:"digest"`
}

// add puts every digest r names into set.
func (r *manifestRefs) add(set map[string]bool) {
	for _, d := range []*refDesc{r.Config, r.Subject} {
		if d != nil {
			set[d.Digest] = true
		}
	}
	for _, l := range [][]refDesc{r.Layers, r.Manifests, r.Blobs} {
		for _, d := range l {
			set[d.Digest] = true
		}
	}
	for _, l := range r.FSLayers {
		set[l.BlobSum] = true
	}
}

// repoRefs is what the manifests of one repository reference, built up
// over a GC pass: manifest bytes never change under their digest, so a
// manifest read once need not be read again.
type repoRefs struct {
	repo string
	refs map[string]bool // digests referenced, and the manifests themselves
	seen map[string]bool // manifests read
}

// update reads the manifests repo links that were not read yet. false: one
// of them cannot be read, so what the repository references is unknown.
func (r *repoRefs) update(s *Store) (bool, error) {
	var ms []string
	err := s.db.View(func(txn *badger.Txn) error {
		ms, _ = page(txn, manLinkPrefix(r.repo), "", -1)
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("cache: list manifests: %w", err)
	}
	for _, m := range ms {
		if r.seen[m] {
			continue
		}
		d, err := ParseDigest(m)
		if err == nil {
			err = checkDigest(d)
		}
		var body []byte
		if err == nil {
			body, err = os.ReadFile(s.blobPath(d))
		}
		var refs manifestRefs
		if err == nil {
			err = json.Unmarshal(body, &refs)
		}
		if err != nil {
			s.log.Warn("gc keeps every blob link of a repository: one of its manifests cannot be read",
				zap.String("repo", r.repo), zap.String("digest", m), zap.Error(err))
			return false, nil
		}
		refs.add(r.refs)
		r.refs[m] = true
		r.seen[m] = true
	}
	return true, nil
}

// dropLinks drops, in every repository, the blob links that no manifest
// of the repository references and that are older than the grace period,
// and stamps unreferenced links without a time. It returns how many links
// it dropped.
func (s *Store) dropLinks(now time.Time) (int, error) {
	cutoff := now.Add(-s.grace)
	dropped := 0
	mirrored := false
	last := ""
	for {
		var repos []string
		var more bool
		err := s.db.View(func(txn *badger.Txn) error {
			repos, more = page(txn, []byte(pRepo), last, linkRepoBatch)
			return nil
		})
		if err != nil {
			return dropped, fmt.Errorf("cache: list repositories: %w", err)
		}
		for _, repo := range repos {
			if s.closing() {
				return dropped, nil // the next round finishes
			}
			n, err := s.dropRepoLinks(repo, now, cutoff)
			dropped += n
			if err != nil {
				return dropped, fmt.Errorf("cache: gc links of %s: %w", repo, err)
			}
			if n > 0 {
				if mc := s.mc.Load(); mc != nil && mc.Mirrored(repo) {
					mirrored = true
				}
			}
		}
		if !more || len(repos) == 0 {
			break
		}
		last = repos[len(repos)-1]
	}
	if mirrored {
		// The running total still holds what was only linked there.
		s.forcePass.Store(true)
		s.kickEvict()
	}
	return dropped, nil
}

// dropRepoLinks is dropLinks for one repository.
func (s *Store) dropRepoLinks(repo string, now, cutoff time.Time) (int, error) {
	type link struct {
		d     string
		at    time.Time
		timed bool
	}
	var links []link
	prefix := blobLinkPrefix(repo)
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			l := link{d: string(it.Item().Key()[len(prefix):])}
			err := it.Item().Value(func(v []byte) error {
				l.at, l.timed = parseLinkTime(v)
				return nil
			})
			if err != nil {
				return err
			}
			links = append(links, l)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("read links: %w", err)
	}
	if len(links) == 0 {
		return 0, nil
	}
	refs := &repoRefs{repo: repo, refs: map[string]bool{}, seen: map[string]bool{}}
	if ok, err := refs.update(s); !ok || err != nil {
		return 0, err
	}
	var stamp, old []string
	for _, l := range links {
		switch {
		case refs.refs[l.d]:
		case !l.timed:
			stamp = append(stamp, l.d)
		case l.at.Before(cutoff):
			old = append(old, l.d)
		}
	}
	for len(stamp) > 0 {
		batch := stamp[:min(len(stamp), linkDropBatch)]
		stamp = stamp[len(batch):]
		if err := s.update(func(txn *badger.Txn) error { return stampLinks(txn, repo, batch, now) }); err != nil {
			return 0, fmt.Errorf("stamp links: %w", err)
		}
	}
	dropped := 0
	for len(old) > 0 {
		batch := old[:min(len(old), linkDropBatch)]
		old = old[len(batch):]
		n, err := s.dropOldLinks(refs, batch, cutoff)
		dropped += n
		if err != nil || s.closing() {
			return dropped, err
		}
	}
	return dropped, nil
}

// stampLinks gives the links among ds that still have no time the time
// now.
func stampLinks(txn *badger.Txn, repo string, ds []string, now time.Time) error {
	for _, d := range ds {
		key := []byte(pBlobLink + repo + sep + d)
		linked, _, timed, err := readLink(txn, key)
		if err != nil {
			return err
		}
		if !linked || timed {
			continue // dropped, or linked again meanwhile with a time
		}
		if err := txn.Set(key, linkTime(now)); err != nil {
			return err
		}
	}
	return nil
}

// dropOldLinks drops the links among ds that, with linking held off, no
// manifest of the repository references and that are still older than
// cutoff. Every manifest commit holds gcMu for reading, so the manifests
// read here are all those committed; a link made or renewed since the scan
// carries a newer time, and a concurrent renewal conflicts with the drop,
// which then reads it again.
func (s *Store) dropOldLinks(refs *repoRefs, ds []string, cutoff time.Time) (int, error) {
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	if ok, err := refs.update(s); !ok || err != nil {
		return 0, err
	}
	dropped := 0
	err := s.update(func(txn *badger.Txn) error {
		dropped = 0
		for _, str := range ds {
			if refs.refs[str] {
				continue
			}
			d, err := ParseDigest(str)
			if err != nil || checkDigest(d) != nil {
				continue // not a key we write
			}
			linked, at, timed, err := readLink(txn, blobLinkKey(refs.repo, d))
			if err != nil {
				return err
			}
			if !linked || !timed || !at.Before(cutoff) {
				continue
			}
			if err := deleteBlobLink(txn, refs.repo, d); err != nil {
				return err
			}
			dropped++
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("drop links: %w", err)
	}
	if dropped > 0 {
		s.log.Debug("dropped blob links no manifest references", zap.String("repo", refs.repo), zap.Int("links", dropped))
	}
	return dropped, nil
}
