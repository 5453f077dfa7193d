package authscope

// Basic credentials checked against an htpasswd file. Only bcrypt hashes
// are accepted (htpasswd -B): the other htpasswd formats (MD5-crypt,
// SHA-1, crypt, plain) are too cheap to brute-force to protect a registry.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Htpasswd holds the users of an htpasswd file.
type Htpasswd struct {
	users map[string][]byte // user -> bcrypt hash
	// dummy is compared against for users not in the file, so that a
	// login for a user that does not exist takes as long as a wrong
	// password for most users that do: see dummyFor.
	dummy []byte

	// bcrypt costs tens of milliseconds by design, and clients send Basic
	// credentials on every request, so a good pair is remembered for a
	// while. Keys are hashes of user and password, never the password.
	mu   sync.Mutex
	good map[[32]byte]time.Time
}

// htpasswdCacheTTL is how long a verified user/password pair is remembered.
const htpasswdCacheTTL = 5 * time.Minute

// htpasswdCacheMax bounds the remembered pairs; the cache empties when full.
const htpasswdCacheMax = 4096

// emptyFileHash is the dummy of a file without users: nobody can be
// enumerated there, it only keeps failed logins as slow as bcrypt.
var emptyFileHash, _ = bcrypt.GenerateFromPassword([]byte("caddy-oci"), bcrypt.DefaultCost)

// dummyFor picks the hash that logins of unknown users are compared
// against: one of the file's own, of the cost most of its hashes have
// (the higher on a tie). bcrypt's time is set by the cost alone, so an
// unknown user then takes as long as a wrong password of any user of
// that cost; a fixed cost would tell every listed user from an unlisted
// one whenever the file's cost differs (htpasswd -B writes 5, caddy
// hash-password 14). The result of that comparison is never used, so it
// does not matter whose hash it is.
func dummyFor(users map[string][]byte) []byte {
	count := map[int]int{}
	byCost := map[int][]byte{}
	for _, h := range users {
		c, _ := bcrypt.Cost(h) // checked when the file was read
		count[c]++
		byCost[c] = h
	}
	best := -1
	for c, n := range count {
		if best < 0 || n > count[best] || (n == count[best] && c > best) {
			best = c
		}
	}
	if best < 0 {
		return emptyFileHash
	}
	return byCost[best]
}

// ParseHtpasswd reads `user:hash` lines; blank lines and lines starting
// with '#' are skipped. A hash that is not bcrypt is an error naming the
// line.
func ParseHtpasswd(data []byte) (*Htpasswd, error) {
	h := &Htpasswd{users: map[string][]byte{}, good: map[[32]byte]time.Time{}}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for ln := 1; sc.Scan(); ln++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		user, hash, ok := strings.Cut(line, ":")
		if !ok || user == "" {
			return nil, fmt.Errorf("htpasswd line %d: not user:hash", ln)
		}
		if _, err := bcrypt.Cost([]byte(hash)); err != nil || !(strings.HasPrefix(hash, "$2a$") || strings.HasPrefix(hash, "$2b$") || strings.HasPrefix(hash, "$2y$")) {
			return nil, fmt.Errorf("htpasswd line %d (user %q): only bcrypt hashes are accepted (htpasswd -B)", ln, user)
		}
		if _, dup := h.users[user]; dup {
			return nil, fmt.Errorf("htpasswd line %d: user %q listed twice", ln, user)
		}
		h.users[user] = []byte(hash)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	h.dummy = dummyFor(h.users)
	return h, nil
}

// hashTurns bounds the bcrypt comparisons running at once in the process
// to half its CPUs (at least one). A comparison at the cost caddy
// hash-password writes (14) takes over a second of CPU, and the bounds on
// failed logins are per address and per account name: twenty addresses
// sending wrong passwords for made-up names within those bounds kept
// both CPUs of a registry busy, and an anonymous manifest GET took a
// second instead of 2 ms. Comparisons past the bound wait their turn, so
// pulls and pushes keep the other half. Sized at the first comparison, so
// that it follows GOMAXPROCS as the process set it when it started
// (Caddy adjusts it to a container's CPU quota), not as package
// initialisation found it.
var hashTurns = NewTurns(func() int { return max(1, runtime.GOMAXPROCS(0)/2) })

// knownTurns are turns of their own, as many again, for logins of an
// account from an address that logged in to it before (see CheckFrom):
// wrong passwords for made-up names from many addresses took every turn
// of hashTurns, so such a login, not remembered (the first of the day),
// waited the whole TurnWait and was then often refused. No made-up name
// and no new address takes these; all CPUs compare at once only while
// such logins and a flood meet.
var knownTurns = NewTurns(func() int { return max(1, runtime.GOMAXPROCS(0)/2) })

// Check reports whether password is user's. On failure it waits failDelay
// (or until ctx ends) before returning, to slow down guessing. When no
// comparison could start within TurnWait (or before ctx ended) it
// returns *ErrTooManyGuesses with Busy set, the password unchecked
// (Turns.Take).
func (h *Htpasswd) Check(ctx context.Context, user, password string, failDelay time.Duration) (bool, error) {
	return h.CheckFrom(ctx, user, password, failDelay, false)
}

// CheckFrom is Check; knownAddress says that the login comes from an address
// that logged in to user before (GuessAttempt.Known), so that it may take
// knownTurns as well.
func (h *Htpasswd) CheckFrom(ctx context.Context, user, password string, failDelay time.Duration, knownAddress bool) (bool, error) {
	key := loginKey(user, password)
	now := time.Now()
	h.mu.Lock()
	exp, hit := h.good[key]
	h.mu.Unlock()
	if hit && now.Before(exp) {
		return true, nil
	}
	hash, known := h.users[user]
	if !known {
		hash = h.dummy
	}
	var own *Turns // nil: none
	if knownAddress {
		own = knownTurns
	}
	release, err := hashTurns.Take(ctx, own)
	if err != nil {
		return false, err
	}
	// The same pair verified while this one waited (a burst of jobs
	// with one account's credentials): no comparison needed.
	h.mu.Lock()
	exp, hit = h.good[key]
	h.mu.Unlock()
	if hit && time.Now().Before(exp) {
		release()
		return true, nil
	}
	ok := bcrypt.CompareHashAndPassword(hash, []byte(password)) == nil && known
	release()
	if ok {
		h.mu.Lock()
		if len(h.good) >= htpasswdCacheMax {
			clear(h.good)
		}
		h.good[key] = now.Add(htpasswdCacheTTL)
		h.mu.Unlock()
		return true, nil
	}
	if failDelay > 0 {
		t := time.NewTimer(failDelay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
	return false, nil
}

// loginKey names a pair in the remembered good logins. The user's length
// comes first, so no two pairs share a key: with a separator alone,
// ("a", "b\x00c") and ("a\x00b", "c") would (Basic credentials may hold
// a NUL on either side of the colon).
func loginKey(user, password string) [sha256.Size]byte {
	h := sha256.New()
	_ = binary.Write(h, binary.BigEndian, uint64(len(user)))
	h.Write([]byte(user))
	h.Write([]byte(password))
	return [sha256.Size]byte(h.Sum(nil))
}

// Remembers reports whether password is user's by the cache of recent
// good logins alone, without a bcrypt comparison: such a check is no
// guess.
func (h *Htpasswd) Remembers(user, password string) bool {
	key := loginKey(user, password)
	h.mu.Lock()
	exp, hit := h.good[key]
	h.mu.Unlock()
	return hit && time.Now().Before(exp)
}

// Has reports whether user is listed.
func (h *Htpasswd) Has(user string) bool {
	_, ok := h.users[user]
	return ok
}
