package registry

import (
	"hash/maphash"
	"sync"
)

// repoLocks serialise a step per repository within this process: a
// fixed set of mutexes, a repository's chosen by its name's hash, so that
// no lock is ever made or forgotten per name. Two repositories may share
// one, which only makes one wait for the other's brief step.
type repoLocks struct {
	seed  maphash.Seed
	once  sync.Once
	locks [64]sync.Mutex
}

// lock takes repo's mutex and returns its release.
func (l *repoLocks) lock(repo string) (unlock func()) {
	l.once.Do(func() { l.seed = maphash.MakeSeed() })
	m := &l.locks[maphash.String(l.seed, repo)%uint64(len(l.locks))]
	m.Lock()
	return m.Unlock
}

// manifestWrites make a pushed manifest's last check and its write one
// step against the other pushes of its repository (recheckUpdate): one
// set for the process, since every handler on one store (two sites, the
// old and the new config across a reload) writes the same repositories.
// Replicas are other processes: between them the step is not atomic, and
// the window is the store's write.
var manifestWrites repoLocks
