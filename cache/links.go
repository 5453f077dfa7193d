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
// store keeps no list of them) whenever a pass examines the repository:
// the full pass every repository, the incremental pass those marked since
// (gccandidates.go). Memory follows the repositories of one batch.

import (
	"context"
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

// ManifestRefs lists the digests a manifest's bytes name (config, layers,
// child manifests, blobs, schema 1 layers, subject), skipping names that
// are not digests and bytes that are not JSON: for a store that records
// what a manifest references when it is pushed.
func ManifestRefs(body []byte) []Digest {
	var r manifestRefs
	if json.Unmarshal(body, &r) != nil {
		return nil
	}
	set := map[string]bool{}
	r.add(set)
	out := make([]Digest, 0, len(set))
	for s := range set {
		if d, err := ParseDigest(s); err == nil {
			out = append(out, d)
		}
	}
	return out
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
		ms, _, _ = page(context.Background(), txn, manLinkPrefix(r.repo), "", -1)
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

// linkPass is what examining repositories found: the links dropped, the
// repositories examined, whether a mirror's repository lost links, and the
// repositories with young unreferenced links, with the time of the oldest
// (their next mark).
type linkPass struct {
	dropped  int
	examined int
	mirrored bool
	later    map[string]time.Time
}

func newLinkPass() *linkPass { return &linkPass{later: map[string]time.Time{}} }

// wait notes that repo has an unreferenced link from at.
func (p *linkPass) wait(repo string, at time.Time) {
	if cur, ok := p.later[repo]; !ok || at.Before(cur) {
		p.later[repo] = at
	}
}

// dropLinks examines every repository (the full pass): see dropRepoLinks.
// Each repository left with young unreferenced links is marked, so the
// incremental passes finish the work.
func (s *Store) dropLinks(now time.Time, lp *linkPass) error {
	last := ""
	for {
		var repos []string
		var more bool
		err := s.db.View(func(txn *badger.Txn) error {
			repos, more, _ = page(context.Background(), txn, []byte(pRepo), last, linkRepoBatch)
			return nil
		})
		if err != nil {
			return fmt.Errorf("cache: list repositories: %w", err)
		}
		if err := s.dropRepoLinks(repos, now, lp); err != nil || s.closing() {
			return err // closing: the next round finishes
		}
		if err := s.settleMarks(nil, lp.later); err != nil {
			return err
		}
		clear(lp.later)
		if !more || len(repos) == 0 {
			return nil
		}
		last = repos[len(repos)-1]
	}
}

// dropMarkedLinks examines the repositories marked longer than the grace
// period ago (the incremental pass), and consumes the marks.
func (s *Store) dropMarkedLinks(now time.Time, lp *linkPass) error {
	var after []byte
	for {
		marks, err := s.repoMarks(now.Add(-s.grace), after)
		if err != nil || len(marks) == 0 {
			return err
		}
		var repos []string
		seen := map[string]bool{}
		for _, m := range marks {
			if !seen[m.name] {
				seen[m.name] = true
				repos = append(repos, m.name)
			}
		}
		if err := s.dropRepoLinks(repos, now, lp); err != nil || s.closing() {
			return err // closing: the marks stay for the next round
		}
		if err := s.settleMarks(marks, lp.later); err != nil {
			return err
		}
		clear(lp.later)
		after = marks[len(marks)-1].key
	}
}

// linkRef is one link of a repository, with what its repository's
// manifests reference.
type linkRef struct {
	refs *repoRefs
	d    string
}

// dropRepoLinks drops, in each of repos, the blob links that no manifest
// of the repository references and that are older than the grace period,
// and stamps unreferenced links without a time. Links are dropped in
// batches across repositories, so a pass over many small changes costs a
// few transactions, not one per repository.
func (s *Store) dropRepoLinks(repos []string, now time.Time, lp *linkPass) error {
	cutoff := now.Add(-s.grace)
	var stamp, old []linkRef
	for _, repo := range repos {
		if s.closing() {
			return nil
		}
		st, ol, err := s.unreferencedLinks(repo, now, lp)
		if err != nil {
			return fmt.Errorf("cache: gc links of %s: %w", repo, err)
		}
		stamp = append(stamp, st...)
		old = append(old, ol...)
	}
	for len(stamp) > 0 {
		batch := stamp[:min(len(stamp), linkDropBatch)]
		stamp = stamp[len(batch):]
		if err := s.update(func(txn *badger.Txn) error { return stampLinks(txn, batch, now) }); err != nil {
			return fmt.Errorf("cache: stamp links: %w", err)
		}
	}
	for len(old) > 0 {
		batch := old[:min(len(old), linkDropBatch)]
		old = old[len(batch):]
		if err := s.dropOldLinks(batch, cutoff, lp); err != nil || s.closing() {
			return err
		}
	}
	return nil
}

// unreferencedLinks reads repo's blob links and what its manifests
// reference, and returns the unreferenced links without a time (to stamp)
// and those older than the grace period (to drop); the young ones are
// noted in lp.
func (s *Store) unreferencedLinks(repo string, now time.Time, lp *linkPass) (stamp, old []linkRef, err error) {
	type link struct {
		d     string
		at    time.Time
		timed bool
	}
	var links []link
	prefix := blobLinkPrefix(repo)
	err = s.db.View(func(txn *badger.Txn) error {
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
		return nil, nil, fmt.Errorf("read links: %w", err)
	}
	if len(links) == 0 {
		return nil, nil, nil
	}
	lp.examined++
	refs := &repoRefs{repo: repo, refs: map[string]bool{}, seen: map[string]bool{}}
	if ok, err := refs.update(s); !ok || err != nil {
		return nil, nil, err
	}
	cutoff := now.Add(-s.grace)
	for _, l := range links {
		switch {
		case refs.refs[l.d]:
		case !l.timed:
			stamp = append(stamp, linkRef{refs, l.d})
			lp.wait(repo, now)
		case l.at.Before(cutoff):
			old = append(old, linkRef{refs, l.d})
		default:
			lp.wait(repo, l.at)
		}
	}
	return stamp, old, nil
}

// stampLinks gives the links among ls that still have no time the time
// now.
func stampLinks(txn *badger.Txn, ls []linkRef, now time.Time) error {
	for _, l := range ls {
		key := []byte(pBlobLink + l.refs.repo + sep + l.d)
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

// dropOldLinks drops the links among ls that, with linking held off, no
// manifest of their repository references and that are still older than
// cutoff. Every manifest commit holds gcMu for reading, so the manifests
// read here are all those committed; a link made or renewed since the scan
// carries a newer time (and is noted in lp for later), and a concurrent
// renewal conflicts with the drop, which then reads it again.
func (s *Store) dropOldLinks(ls []linkRef, cutoff time.Time, lp *linkPass) error {
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	readable := map[*repoRefs]bool{}
	for _, l := range ls {
		if _, done := readable[l.refs]; done {
			continue
		}
		ok, err := l.refs.update(s)
		if err != nil {
			return err
		}
		readable[l.refs] = ok
	}
	var dropped map[string]int
	err := s.update(func(txn *badger.Txn) error {
		dropped = map[string]int{}
		for _, l := range ls {
			if !readable[l.refs] || l.refs.refs[l.d] {
				continue
			}
			d, err := ParseDigest(l.d)
			if err != nil || checkDigest(d) != nil {
				continue // not a key we write
			}
			repo := l.refs.repo
			linked, at, timed, err := readLink(txn, blobLinkKey(repo, d))
			if err != nil {
				return err
			}
			if !linked || !timed {
				continue
			}
			if !at.Before(cutoff) {
				lp.wait(repo, at)
				continue
			}
			if err := deleteBlobLink(txn, repo, d); err != nil {
				return err
			}
			dropped[repo]++
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cache: drop links: %w", err)
	}
	mc := s.mc.Load()
	for repo, n := range dropped {
		lp.dropped += n
		if mc != nil && mc.Mirrored(repo) {
			lp.mirrored = true
		}
		s.log.Debug("dropped blob links no manifest references", zap.String("repo", repo), zap.Int("links", n))
	}
	return nil
}
