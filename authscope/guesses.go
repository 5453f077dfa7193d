package authscope

// Guesses bounds password guessing. A failed login waits FailDelay, but
// that slows one connection only: an attacker who sends 500 guesses at
// once gets 500 answers a second. Guesses counts failed logins per client
// address and per account name in tables of fixed size (the keys are the
// attacker's to choose, so nothing grows with them), and every check is
// charged before it runs, so that guesses in flight count too: the rate
// of guesses is bounded whatever the parallelism. Once a bound is reached
// the caller is answered 429 without its password being looked at (nor
// sent to an LDAP directory, whose own lockout an attacker would
// otherwise trip for the user).

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"hash/maphash"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Default guess limits.
const (
	DefaultGuessesPerClient  = 10
	DefaultGuessesPerAccount = 60
	DefaultGuessWindow       = time.Minute
)

// GuessLimits configure Guesses.
type GuessLimits struct {
	// PerClient is how many failed logins one client address (an IPv6
	// client: its /64) may make per Window. Negative: no bound; zero:
	// DefaultGuessesPerClient.
	PerClient int
	// PerAccount is how many failed logins one account name may take per
	// Window from all addresses together, except from addresses that
	// logged in to it before (so a flood from elsewhere does not lock
	// its owner out). Negative: no bound; zero: DefaultGuessesPerAccount.
	PerAccount int
	// Window is the period of both bounds; zero: DefaultGuessWindow.
	Window time.Duration
}

// Sizes of the tables: entries are 32 bytes, so the four take a megabyte
// together. A set of guessSetWays entries shares one hash slot.
const (
	guessTableSize = 8192
	guessSetWays   = 8
	// knownLoginFor is how long an address that logged in to an account
	// stays exempt from that account's bound.
	knownLoginFor = 30 * 24 * time.Hour
	// guessWaitMax bounds how long a check waits for checks in flight
	// from the same address to finish: long enough for a burst of good
	// logins at a high bcrypt cost on a busy machine (a second each).
	guessWaitMax = 30 * time.Second
)

// Guesses is a limiter of failed logins; the zero value is not usable,
// make one with NewGuesses. A nil *Guesses allows everything.
type Guesses struct {
	// Refused, if set, is told of each login refused unchecked, and by
	// which bound (for a metric).
	Refused func(account bool)
	// Ledger, if set, is shared with the other processes serving the
	// same registry (replicas behind a load balancer): failed logins and
	// good ones are recorded there too, and each check takes what the
	// others recorded into account, so a bound is the cluster's rather
	// than each process's (N replicas would otherwise allow N times the
	// guesses). When it cannot be reached the bounds are this process's
	// alone, as without one, and LedgerFailed is told.
	Ledger       GuessLedger
	LedgerFailed func(error)
	// ledgerDownUntil: unix nanoseconds until which the ledger is left
	// alone after a failed call (ledgerRest).
	ledgerDownUntil atomic.Int64

	perClient, perAccount float64
	window                time.Duration
	seed                  maphash.Seed
	now                   func() time.Time

	mu       sync.Mutex
	clients  guessTable
	accounts guessTable
	known    guessTable // (account, client) pairs that logged in
	// pairs are the known pairs' own buckets, apart from clients: every
	// check in flight holds its bucket's entry, and a flood from more new
	// addresses than clients holds, waiting long for its turns, held every
	// entry there, so that a known pair's login waited for one.
	pairs   guessTable
	changed chan struct{} // closed and replaced when a check ends
}

// guessEntry is one key's failures: debt decays at limit/window.
type guessEntry struct {
	key     uint64 // 0: free
	debt    float64
	at      int64 // unix nanoseconds of debt (known: of the last login)
	pending int32 // checks charged and not yet ended
}

type guessTable []guessEntry

// NewGuesses makes a limiter of l.
func NewGuesses(l GuessLimits) *Guesses {
	if l.PerClient == 0 {
		l.PerClient = DefaultGuessesPerClient
	}
	if l.PerAccount == 0 {
		l.PerAccount = DefaultGuessesPerAccount
	}
	if l.Window <= 0 {
		l.Window = DefaultGuessWindow
	}
	return &Guesses{
		perClient: float64(l.PerClient), perAccount: float64(l.PerAccount), window: l.Window,
		seed: maphash.MakeSeed(), now: time.Now,
		clients: make(guessTable, guessTableSize), accounts: make(guessTable, guessTableSize),
		known: make(guessTable, guessTableSize), pairs: make(guessTable, guessTableSize),
		changed: make(chan struct{}),
	}
}

// ClientKey is the address a client is counted by: its IP, an IPv6 one
// by its /64, which one host usually holds whole. An address that does
// not parse counts as itself.
func ClientKey(ip string) string {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	addr = addr.Unmap()
	if addr.Is6() {
		p, _ := addr.Prefix(64)
		return p.String()
	}
	return addr.String()
}

// accountKey is the spelling of an account name its failures are counted
// under: a directory compares user names ignoring case and insignificant
// spaces (RFC 4518: leading, trailing and repeated ones), so " Alice "
// and "alice" are one account to it and must be one to the bound.
// Merging names htpasswd tells apart only makes the bound stricter.
func accountKey(account string) string {
	return strings.Join(strings.Fields(strings.ToLower(account)), " ")
}

// GuessAttempt is one charged check; End it with its outcome.
type GuessAttempt struct {
	g               *Guesses
	client, account uint64
	known           uint64 // the (account, client) pair; 0 without account
	bucket          uint64 // the key charged in the clients table
	charged         bool   // the account was charged
	shared          *sharedGuesses
}

// ErrTooManyGuesses is a login refused, unchecked, because its client or
// account used up its failed logins; RetryAfter says for how long.
type ErrTooManyGuesses struct {
	RetryAfter time.Duration
	Account    bool // the account's bound, not the client's
	// Busy: not a bound of the caller's, the process's checks of
	// credentials at once (see Turns).
	Busy bool
}

func (e *ErrTooManyGuesses) Error() string {
	if e.Busy {
		return "too many passwords being checked at once; retry after " + e.RetryAfter.String()
	}
	if e.Account {
		return "too many failed logins for this account; retry after " + e.RetryAfter.String()
	}
	return "too many failed logins from this address; retry after " + e.RetryAfter.String()
}

// Begin charges a check of account's credentials from client (an IP
// address; see ClientKey). account may be empty (then only the client is
// bounded). It returns the attempt to End, or *ErrTooManyGuesses: then
// the credentials must not be checked. While the client's checks in
// flight would take it past its bound, it waits for one of them to end
// (up to ctx and a few seconds): a client sending many requests at once
// with good credentials is slowed, not refused.
//
// An account that logged in from the client's address before is counted
// apart, in a bucket of its own for that pair (of the PerClient size)
// and free of the account's bound: a stale password that one job behind
// a shared NAT address keeps sending then uses up only its own pair's
// failures, not the logins of everyone else behind that address, and a
// flood from elsewhere does not lock the account out where it is used.
func (g *Guesses) Begin(ctx context.Context, client, account string) (*GuessAttempt, error) {
	return g.begin(ctx, client, account, true)
}

// BeginKey is Begin for a check of an API key whose id is id: bounded
// per client (and per known pair, as Begin), never per account. A key's
// secret is too long for any number of guesses to find, and its id is
// no secret (it leads the key, and shows in logs and lists): an account
// bound would guard nothing and let anyone who learnt the id lock the
// key out of every address it has not worked from yet.
func (g *Guesses) BeginKey(ctx context.Context, client, id string) (*GuessAttempt, error) {
	return g.begin(ctx, client, "apikey:"+id, false)
}

func (g *Guesses) begin(ctx context.Context, client, account string, accountBound bool) (*GuessAttempt, error) {
	if g == nil {
		return nil, nil
	}
	a := &GuessAttempt{g: g, client: g.hash("c", ClientKey(client), "")}
	if account != "" {
		account = accountKey(account)
		if accountBound {
			a.account = g.hash("a", account, "")
		}
		a.known = g.hash("k", account, ClientKey(client))
	}
	if g.Ledger != nil {
		a.shared = g.loadShared(ctx, client, account, accountBound, !g.refusedHere(a))
	}
	deadline := time.NewTimer(guessWaitMax)
	defer deadline.Stop()
	for {
		g.mu.Lock()
		wait, err := g.charge(a)
		changed := g.changed
		g.mu.Unlock()
		if !wait {
			if err != nil {
				if g.Refused != nil {
					g.Refused(err.(*ErrTooManyGuesses).Account)
				}
				return nil, err
			}
			return a, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, &ErrTooManyGuesses{RetryAfter: time.Second}
		case <-deadline.C:
			// The checks in flight take long (bcrypt at a high cost on a
			// busy machine): a client with more of them than its bound
			// is refused like one past it.
			if g.Refused != nil {
				g.Refused(false)
			}
			return nil, &ErrTooManyGuesses{RetryAfter: time.Second}
		}
	}
}

// charge charges a, or says why not: a bound reached (err), or checks in
// flight filling what is left (wait). It settles which bucket a is
// charged to (a.bucket) and whether the account is (a.charged).
func (g *Guesses) charge(a *GuessAttempt) (wait bool, err error) {
	now := g.now().UnixNano()
	known := a.known != 0 && g.isKnown(a.known, now)
	if !known && a.known != 0 && a.shared.knownPair() {
		// Logged in on another replica: remembered here from now on,
		// as if it had been here.
		g.rememberLogin(a.known, now)
		known = true
	}
	a.bucket = a.client
	if known {
		a.bucket = a.known // the pair's own bucket
	}
	c := g.buckets(known).entry(a.bucket, now, g.perClient, g.window, true)
	if c == nil { // every entry of the set has checks in flight
		return true, nil
	}
	c.debt = max(c.debt, a.shared.debt(known, false))
	if g.perClient > 0 {
		if c.debt+1 > g.perClient {
			return false, &ErrTooManyGuesses{RetryAfter: g.retry(c.debt+1-g.perClient, g.perClient)}
		}
		if c.debt+float64(c.pending)+1 > g.perClient {
			return true, nil
		}
	}
	a.charged = false
	if a.account != 0 && g.perAccount > 0 && !known {
		acc := g.accounts.entry(a.account, now, g.perAccount, g.window, true)
		if acc == nil {
			return true, nil
		}
		acc.debt = max(acc.debt, a.shared.debt(false, true))
		if acc.debt+1 > g.perAccount {
			return false, &ErrTooManyGuesses{RetryAfter: g.retry(acc.debt+1-g.perAccount, g.perAccount), Account: true}
		}
		// Checks in flight for the account are charged at once: others'
		// good logins must not wait on an attacker's.
		acc.debt++
		a.charged = true
	}
	c.pending++
	return false, nil
}

// refusedHere reports whether this process's own counts refuse a
// already (charge says so again, and why): such a check does not read
// the ledger, so a flood, from one address or many, at one account or
// many, costs the database nothing once each replica's counts refuse it.
func (g *Guesses) refusedHere(a *GuessAttempt) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now().UnixNano()
	known := a.known != 0 && g.isKnown(a.known, now)
	bucket := a.client
	if known {
		bucket = a.known
	}
	if c := g.buckets(known).find(bucket); c != nil && g.perClient > 0 {
		c.decay(now, g.perClient, g.window)
		if c.debt+1 > g.perClient {
			return true
		}
	}
	if a.account == 0 || g.perAccount <= 0 || known {
		return false
	}
	acc := g.accounts.find(a.account)
	if acc == nil {
		return false
	}
	acc.decay(now, g.perAccount, g.window)
	return acc.debt+1 > g.perAccount
}

// RetryAfter is d as the value of a Retry-After header: whole seconds,
// rounded up, so that a client never comes back early.
func RetryAfter(d time.Duration) string {
	return strconv.Itoa(int((d + time.Second - 1) / time.Second))
}

// setRetryAfter sets h's Retry-After to what err asks when it is an
// *ErrTooManyGuesses (a bound on failed logins, or no turn in time).
func setRetryAfter(h http.Header, err error) {
	var tm *ErrTooManyGuesses
	if errors.As(err, &tm) {
		h.Set("Retry-After", RetryAfter(tm.RetryAfter))
	}
}

// retry is how long until excess debt has decayed at limit per window,
// in whole seconds (Retry-After has no finer unit).
func (g *Guesses) retry(excess, limit float64) time.Duration {
	d := time.Duration(excess / limit * float64(g.window))
	return max(d.Round(time.Second)+time.Second, time.Second)
}

// buckets is the table of a bucket: pairs for a known pair's, else clients.
func (g *Guesses) buckets(known bool) guessTable {
	if known {
		return g.pairs
	}
	return g.clients
}

// rememberLogin notes that pair k logged in at now (g.mu held).
func (g *Guesses) rememberLogin(k uint64, now int64) {
	e := g.known.find(k)
	if e == nil {
		e = g.known.oldest(k)
	}
	e.key, e.at = k, now
}

func (g *Guesses) isKnown(k uint64, now int64) bool {
	e := g.known.find(k)
	return e != nil && now-e.at < int64(knownLoginFor)
}

// Known reports whether a is a check of an account from an address that
// logged in to it before (charged to the pair's own bucket).
func (a *GuessAttempt) Known() bool {
	return a != nil && a.known != 0 && a.bucket == a.known
}

// End records how a's check went: a failed login stays charged to the
// client and the account; a good one is refunded, and exempts the client
// from the account's bound from then on.
func (a *GuessAttempt) End(ok bool) { a.end(ok, ok) }

// Refund ends a check that could not be made (the key store, the
// directory or the token service failed): it is refunded as a good login
// is, but proves nothing, so the client gains no exemption.
func (a *GuessAttempt) Refund() { a.end(true, false) }

func (a *GuessAttempt) end(ok, good bool) {
	if a == nil {
		return
	}
	g := a.g
	now := g.now().UnixNano()
	if a.shared != nil && (!ok || good) {
		defer g.recordShared(a, ok)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if c := g.buckets(a.Known()).find(a.bucket); c != nil {
		c.pending--
		if !ok && g.perClient > 0 {
			c.decay(now, g.perClient, g.window)
			c.debt++
		}
	}
	if ok && a.charged {
		if acc := g.accounts.find(a.account); acc != nil {
			acc.debt = max(acc.debt-1, 0)
		}
	}
	if good && a.known != 0 {
		g.rememberLogin(a.known, now)
	}
	close(g.changed)
	g.changed = make(chan struct{})
}

func (g *Guesses) hash(kind, a, b string) uint64 {
	var h maphash.Hash
	h.SetSeed(g.seed)
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(a)))
	h.WriteString(kind)
	h.Write(n[:])
	h.WriteString(a)
	h.WriteString(b)
	return h.Sum64() | 1 // never 0, which marks a free entry
}

// set is the entries key may occupy.
func (t guessTable) set(key uint64) []guessEntry {
	// Not the low bit, which is always 1 (hash): half the sets unused.
	i := int((key>>1)%uint64(len(t)/guessSetWays)) * guessSetWays
	return t[i : i+guessSetWays]
}

func (t guessTable) find(key uint64) *guessEntry {
	s := t.set(key)
	for i := range s {
		if s[i].key == key {
			return &s[i]
		}
	}
	return nil
}

// entry returns key's entry, decayed to now; a key not present takes the
// entry of its set with the least debt (free entries and ones fully
// decayed have none, so normally nothing is lost), never one with checks
// in flight: nil when all have some.
func (t guessTable) entry(key uint64, now int64, limit float64, window time.Duration, create bool) *guessEntry {
	s := t.set(key)
	var victim *guessEntry
	for i := range s {
		e := &s[i]
		e.decay(now, limit, window)
		if e.key == key {
			return e
		}
		if e.pending == 0 && (victim == nil || score(e) < score(victim)) {
			victim = e
		}
	}
	if victim == nil || !create {
		return nil
	}
	*victim = guessEntry{key: key, at: now}
	return victim
}

// score orders the entries a new key may take: free first, then by debt.
func score(e *guessEntry) float64 {
	if e.key == 0 {
		return -1
	}
	return e.debt
}

// oldest is the entry of key's set used longest ago (or free).
func (t guessTable) oldest(key uint64) *guessEntry {
	s := t.set(key)
	v := &s[0]
	for i := range s {
		if v.key != 0 && (s[i].key == 0 || s[i].at < v.at) {
			v = &s[i]
		}
	}
	return v
}

func (e *guessEntry) decay(now int64, limit float64, window time.Duration) {
	if e.key == 0 || limit <= 0 {
		return
	}
	if el := now - e.at; el > 0 {
		e.debt = max(e.debt-float64(el)/float64(window)*limit, 0)
	}
	e.at = now
}

// recentKeys remembers, by their hash, the API keys that verified within
// recentKeyFor, for Guesses: a key seen good is not guessed. Keys enter
// only by verifying, so nobody without one can fill it; it empties when
// full. The zero value is ready.
type recentKeys struct {
	mu   sync.Mutex
	seen map[[sha256.Size]byte]int64 // unix nanoseconds of the last good check
}

const (
	recentKeyFor  = 5 * time.Minute
	recentKeysMax = 4096
)

func (k *recentKeys) has(key string) bool {
	h := sha256.Sum256([]byte(key))
	k.mu.Lock()
	defer k.mu.Unlock()
	at, ok := k.seen[h]
	return ok && time.Now().UnixNano()-at < int64(recentKeyFor)
}

func (k *recentKeys) add(key string) {
	h := sha256.Sum256([]byte(key))
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.seen == nil || len(k.seen) >= recentKeysMax {
		k.seen = make(map[[sha256.Size]byte]int64)
	}
	k.seen[h] = time.Now().UnixNano()
}

// forget drops key: its next failures count again.
func (k *recentKeys) forget(key string) {
	h := sha256.Sum256([]byte(key))
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.seen, h)
}
