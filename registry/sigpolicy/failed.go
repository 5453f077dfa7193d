package sigpolicy

import (
	"errors"
	"sync"
	"time"
)

// A repository may hold many manifests that claim to sign an image
// (anyone who may push there can add referrers), and a check verifies at
// most MaxCandidates of them. So that those cannot hide the one that
// verifies, each check reads first the signature that passed last time
// (remembered for passedTTL), then those it has not seen fail; it passes
// over those it has. A signature manifest is content-addressed,
// so the same one fails the same way under the same keys; what may
// change is only what it reads (a blob missing for now, never
// remembered) and, for notation, time (validity, revocation), hence its
// shorter memory.
const (
	passedTTL       = 24 * time.Hour
	cosignFailTTL   = 10 * time.Minute
	notationFailTTL = time.Minute
	// maxFailed bounds the memory: past it, expired entries go, and if
	// none has, all do (checks then verify again what they meet).
	maxFailed = 1 << 16
)

// errUnread marks a failure to read a signature's material (its blob
// missing or the store failing), which may pass later and is not
// remembered.
var errUnread = errors.New("signature material unreadable")

type failKey struct{ candidate, subject string }

// failedSigs remembers which candidates failed as signatures of which
// subjects, until when.
type failedSigs struct {
	mu    sync.Mutex
	until map[failKey]time.Time
}

func (f *failedSigs) has(candidate, subject string, now time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.until[failKey{candidate, subject}]
	return ok && now.Before(t)
}

func (f *failedSigs) put(candidate, subject string, until time.Time, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.until == nil {
		f.until = make(map[failKey]time.Time)
	}
	if len(f.until) >= maxFailed {
		for k, t := range f.until {
			if !now.Before(t) {
				delete(f.until, k)
			}
		}
		if len(f.until) >= maxFailed {
			clear(f.until)
		}
	}
	f.until[failKey{candidate, subject}] = until
}

// unreadError is err, marked as errUnread without changing its text.
type unreadError struct{ err error }

func (e unreadError) Error() string   { return e.err.Error() }
func (e unreadError) Unwrap() []error { return []error{e.err, errUnread} }

// passedSigs remembers, per subject, the candidate that last verified,
// until when. It only orders what a check reads: the candidate must
// still be listed, and verify again.
type passedSigs struct {
	mu    sync.Mutex
	until map[string]passedSig
}

type passedSig struct {
	candidate string
	until     time.Time
}

func (ps *passedSigs) get(subject string, now time.Time) (string, bool) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	p, ok := ps.until[subject]
	return p.candidate, ok && now.Before(p.until)
}

func (ps *passedSigs) put(subject, candidate string, until, now time.Time) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.until == nil {
		ps.until = make(map[string]passedSig)
	}
	if len(ps.until) >= maxFailed {
		for k, p := range ps.until {
			if !now.Before(p.until) {
				delete(ps.until, k)
			}
		}
		if len(ps.until) >= maxFailed {
			clear(ps.until)
		}
	}
	ps.until[subject] = passedSig{candidate, until}
}
