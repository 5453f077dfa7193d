package authscope

import (
	"context"
	"sync"
	"time"
)

// Turns bounds how many checks of credentials run at once in the process
// when what they spend is shared by every caller, whatever its address or
// account: CPU for htpasswd's bcrypt comparisons (hashTurns), an LDAP
// directory's connections for its binds. The bounds on failed logins
// (Guesses) count per address and per account; a flood through many
// addresses passes them, and meets this bound instead.
type Turns struct {
	size func() int
	once sync.Once
	ch   chan struct{}
}

// NewTurns makes a bound of size() checks at once; size is asked at the
// first Take, not before.
func NewTurns(size func() int) *Turns { return &Turns{size: size} }

// TurnWait bounds the wait for a turn: past it the login is refused,
// unchecked, as one too many at once (429 with Retry-After), rather than
// held for as long as a flood lasts.
const TurnWait = 10 * time.Second

// Take waits for a turn of t, or of also (a lane of its own, as
// htpasswd's for known addresses; nil: none), at most TurnWait or until
// ctx ends, and returns the function that gives it back. When none came
// it returns *ErrTooManyGuesses with Busy set: the credentials are not
// checked.
func (t *Turns) Take(ctx context.Context, also *Turns) (release func(), err error) {
	var other chan struct{} // nil: never ready
	if also != nil {
		other = also.turns()
	}
	wait := time.NewTimer(TurnWait)
	defer wait.Stop()
	select {
	case t.turns() <- struct{}{}:
		return func() { <-t.ch }, nil
	case other <- struct{}{}:
		return func() { <-other }, nil
	case <-wait.C:
	case <-ctx.Done():
	}
	return nil, &ErrTooManyGuesses{RetryAfter: time.Second, Busy: true}
}

// turns is t's channel, made at its first use.
func (t *Turns) turns() chan struct{} {
	t.once.Do(func() { t.ch = make(chan struct{}, max(1, t.size())) })
	return t.ch
}
