package authscope

// API keys: long-lived secrets a signed-in user makes for CI, used as the
// password of Basic auth. A key is shown once; the store keeps only its
// SHA-256 (the key has 256 random bits, so a slow hash would add
// nothing). A key carries its owner's user name and the groups the
// identity provider's ID token gave at the owner's last sign-in: they are
// refreshed at every sign-in of the owner and trusted only GroupsMaxAge
// after it, since the server cannot ask the provider between sign-ins
// and a group the owner lost must not live on in a key for a year.
// Groups of the config (group lines) are not kept in keys: the policy
// reads them by user name, as they are now.

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// APIKeyPrefix starts every API key, so that the Basic path tells a key
// from an htpasswd password without a lookup, and secret scanners can
// find leaked keys.
const APIKeyPrefix = "ocik_"

// Defaults of APIKeys.
const (
	DefaultAPIKeyTTL    = 90 * 24 * time.Hour
	DefaultAPIKeyMaxTTL = 365 * 24 * time.Hour
	// apiKeyTouchEvery coalesces last-used updates: a key used many
	// times a minute is written at most once a minute.
	apiKeyTouchEvery = time.Minute
	maxAPIKeyLabel   = 100
	// MaxAPIKeysPerUser bounds the keys one user holds, recently expired
	// ones included: the store and every listing would otherwise grow
	// with whatever a signed-in user asks.
	MaxAPIKeysPerUser = 100
	// APIKeyKeepExpired is how long an expired key stays listed (so its
	// owner can see why a CI job stopped working) before it is removed.
	APIKeyKeepExpired = 30 * 24 * time.Hour
	// DefaultAPIKeyGroupsMaxAge is how long after the owner's last
	// sign-in a key's groups count. A week: a group the provider took
	// away lives on in keys for days, not for the key's life, while the
	// owner of a CI key needs to sign in once a week, not every day as
	// a session's 12 hours would ask.
	DefaultAPIKeyGroupsMaxAge = 7 * 24 * time.Hour
)

// Errors of API keys.
var (
	ErrAPIKeyInvalid  = errors.New("invalid API key")
	ErrAPIKeyNotFound = errors.New("no such API key")
	// ErrAPIKeyRequest is a key that cannot be made as asked.
	ErrAPIKeyRequest = errors.New("bad API key request")
)

// APIKeyStore keeps API key records, opaque to it, by ID. It is all
// authscope needs of storage.
type APIKeyStore interface {
	// CreateAPIKey stores a new record; an existing id is an error.
	CreateAPIKey(id string, record []byte) error
	// APIKey returns the record of id, or an error wrapping
	// ErrAPIKeyNotFound.
	APIKey(id string) ([]byte, error)
	// UpdateAPIKey replaces the record of id by what fn makes of it, in
	// one transaction; a missing id wraps ErrAPIKeyNotFound and fn is not
	// called (so a revoked key is never written back).
	UpdateAPIKey(id string, fn func(record []byte) ([]byte, error)) error
	// DeleteAPIKey removes id; a missing id is not an error.
	DeleteAPIKey(id string) error
	// APIKeys returns every record.
	APIKeys() ([][]byte, error)
}

// APIKey is a key's record. The secret itself is never stored.
type APIKey struct {
	ID       string    `json:"id"`
	Hash     string    `json:"hash"` // hex SHA-256 of the whole key
	User     string    `json:"user"`
	Groups   []string  `json:"groups,omitempty"`
	Label    string    `json:"label,omitempty"`
	Created  time.Time `json:"created"`
	Expires  time.Time `json:"expires"`
	LastUsed time.Time `json:"last_used,omitzero"`
	// GroupsAsOf is when Groups were last taken from a sign-in of the
	// owner; zero (a key from before it was kept) is Created.
	GroupsAsOf time.Time `json:"groups_as_of,omitzero"`
}

// groupsAsOf is when k's groups were last refreshed.
func (k APIKey) groupsAsOf() time.Time {
	if k.GroupsAsOf.IsZero() {
		return k.Created
	}
	return k.GroupsAsOf
}

// APIKeys makes, checks, lists and revokes keys.
type APIKeys struct {
	Store APIKeyStore
	// DefaultTTL is a new key's lifetime when the user names none;
	// MaxTTL the longest a user may ask for. Defaults: 90 and 365 days.
	DefaultTTL, MaxTTL time.Duration
	// GroupsMaxAge is how long after its owner's last sign-in a key's
	// groups count; past it the key has its owner's name-based rights
	// only, until the owner signs in again. Default: 7 days.
	GroupsMaxAge time.Duration
	// GroupsFromDirectory: a key's groups are those the Authorizer's
	// Directory (a DirectoryUsers) holds for its owner now, not those of
	// the owner's last sign-in, for a provider whose groups come from
	// that directory. An owner the directory no longer holds makes the
	// key refused (401); one the htpasswd file lists has only the
	// config's groups.
	GroupsFromDirectory bool
	// Now is the clock; nil is time.Now.
	Now func() time.Time

	mu      sync.Mutex
	touched map[string]time.Time // id -> last write of LastUsed

	createMu sync.Mutex // a user's count and a new key, together
}

func (k *APIKeys) now() time.Time {
	if k.Now != nil {
		return k.Now()
	}
	return time.Now()
}

func (k *APIKeys) ttls() (def, maxTTL time.Duration) {
	def, maxTTL = k.DefaultTTL, k.MaxTTL
	if maxTTL <= 0 {
		maxTTL = DefaultAPIKeyMaxTTL
	}
	if def <= 0 {
		def = min(DefaultAPIKeyTTL, maxTTL)
	}
	return def, maxTTL
}

// Create makes a key for user with groups known now; ttl 0 is the
// default. It returns the key, which is not kept anywhere, and its
// record.
func (k *APIKeys) Create(user string, groups []string, label string, ttl time.Duration) (string, APIKey, error) {
	return k.CreateFromSignIn(user, groups, k.now(), label, ttl)
}

// CreateFromSignIn is Create for groups that a sign-in at signedIn gave:
// they count from then, not from the key's making, and give way to the
// groups of a later sign-in that the user's other keys hold (a session
// left open elsewhere does not bring back a group the provider took
// away since).
func (k *APIKeys) CreateFromSignIn(user string, groups []string, signedIn time.Time, label string, ttl time.Duration) (string, APIKey, error) {
	if user == "" {
		return "", APIKey{}, errors.New("API key without a user")
	}
	label = strings.TrimSpace(label)
	if len(label) > maxAPIKeyLabel || strings.ContainsFunc(label, isControl) {
		return "", APIKey{}, fmt.Errorf("%w: label: at most %d printable characters", ErrAPIKeyRequest, maxAPIKeyLabel)
	}
	def, maxTTL := k.ttls()
	switch {
	case ttl == 0:
		ttl = def
	case ttl < 0 || ttl > maxTTL:
		return "", APIKey{}, fmt.Errorf("%w: lifetime %s: must be positive and at most %s", ErrAPIKeyRequest, days(ttl), days(maxTTL))
	}
	idRaw, err := randomBytes(8)
	if err != nil {
		return "", APIKey{}, err
	}
	secret, err := randomString(32)
	if err != nil {
		return "", APIKey{}, err
	}
	k.createMu.Lock()
	defer k.createMu.Unlock()
	have, err := k.List(user)
	if err != nil {
		return "", APIKey{}, err
	}
	if len(have) >= MaxAPIKeysPerUser {
		return "", APIKey{}, fmt.Errorf("%w: at most %d keys per user; revoke one first", ErrAPIKeyRequest, MaxAPIKeysPerUser)
	}
	now := k.now().UTC().Truncate(time.Second)
	asOf := signedIn.UTC().Truncate(time.Second)
	if asOf.After(now) {
		asOf = now
	}
	for _, other := range have {
		if other.GroupsAsOf.After(asOf) {
			groups, asOf = other.Groups, other.GroupsAsOf
		}
	}
	id := hex.EncodeToString(idRaw)
	key := APIKeyPrefix + id + "_" + secret
	rec := APIKey{
		ID: id, Hash: hashKey(key), User: user, Groups: slices.Clone(groups), Label: label,
		Created: now, Expires: now.Add(ttl), GroupsAsOf: asOf,
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return "", APIKey{}, err
	}
	if err := k.Store.CreateAPIKey(id, b); err != nil {
		return "", APIKey{}, fmt.Errorf("storing API key: %w", err)
	}
	return key, rec, nil
}

// Verify returns the record of key if key is one of ours, unrevoked and
// unexpired, and notes its use. An unknown key does the same work as a
// known one with a wrong secret (a record decoded, a hash compared), so
// that the time taken does not tell which IDs exist.
func (k *APIKeys) Verify(key string) (APIKey, error) {
	id, ok := apiKeyID(key)
	if !ok {
		return APIKey{}, fmt.Errorf("%w: malformed", ErrAPIKeyInvalid)
	}
	b, err := k.Store.APIKey(id)
	known := err == nil
	switch {
	case errors.Is(err, ErrAPIKeyNotFound):
		b = unknownAPIKeyRecord
	case err != nil:
		return APIKey{}, fmt.Errorf("reading API key %s: %w", id, err)
	}
	var rec APIKey
	if err := json.Unmarshal(b, &rec); err != nil {
		return APIKey{}, fmt.Errorf("API key %s: %w", id, err)
	}
	h := hashKey(key)
	match := len(rec.Hash) == len(h) && subtle.ConstantTimeCompare([]byte(rec.Hash), []byte(h)) == 1
	if !known {
		return APIKey{}, fmt.Errorf("%w: unknown or revoked key %s", ErrAPIKeyInvalid, id)
	}
	if !match {
		return APIKey{}, fmt.Errorf("%w: wrong secret for key %s", ErrAPIKeyInvalid, id)
	}
	now := k.now()
	if !now.Before(rec.Expires) {
		return APIKey{}, fmt.Errorf("%w: key %s expired at %s", ErrAPIKeyInvalid, id, rec.Expires.Format(time.RFC3339))
	}
	k.touch(id, now)
	return rec, nil
}

// groupsMaxAge is GroupsMaxAge or its default.
func (k *APIKeys) groupsMaxAge() time.Duration {
	if k.GroupsMaxAge > 0 {
		return k.GroupsMaxAge
	}
	return DefaultAPIKeyGroupsMaxAge
}

// GroupsStaleAt is when rec's groups stop counting, unless its owner
// signs in before.
func (k *APIKeys) GroupsStaleAt(rec APIKey) time.Time {
	return rec.groupsAsOf().Add(k.groupsMaxAge())
}

// Groups returns the groups rec's caller has at now: the key's groups
// while they are fresh, none once they are stale.
func (k *APIKeys) Groups(rec APIKey, now time.Time) []string {
	if !now.Before(k.GroupsStaleAt(rec)) {
		return nil
	}
	return rec.Groups
}

// RefreshGroups gives every key of user the groups of a sign-in that
// just happened, so that a group the provider took away leaves the keys
// with it, and their groups count again for GroupsMaxAge.
func (k *APIKeys) RefreshGroups(user string, groups []string) error {
	keys, err := k.List(user)
	if err != nil {
		return err
	}
	now := k.now().UTC().Truncate(time.Second)
	for _, rec := range keys {
		err := k.Store.UpdateAPIKey(rec.ID, func(b []byte) ([]byte, error) {
			var cur APIKey
			if err := json.Unmarshal(b, &cur); err != nil {
				return nil, err
			}
			if cur.User != user {
				return b, nil
			}
			cur.Groups, cur.GroupsAsOf = slices.Clone(groups), now
			return json.Marshal(cur)
		})
		if err != nil && !errors.Is(err, ErrAPIKeyNotFound) {
			return fmt.Errorf("refreshing the groups of API key %s: %w", rec.ID, err)
		}
	}
	return nil
}

// unknownAPIKeyRecord stands in for the record of a key that does not
// exist: shaped like a real one, matching no key.
var unknownAPIKeyRecord, _ = json.Marshal(APIKey{
	ID: "0000000000000000", Hash: strings.Repeat("0", sha256.Size*2), User: "nobody",
	Created: time.Unix(0, 0).UTC(), Expires: time.Unix(0, 0).UTC(),
})

// touch records that id was used at now, writing at most once per
// apiKeyTouchEvery per key. A failed write is not the caller's problem:
// the key stays valid, only its last-used time lags.
func (k *APIKeys) touch(id string, now time.Time) {
	k.mu.Lock()
	if k.touched == nil {
		k.touched = map[string]time.Time{}
	}
	if last, ok := k.touched[id]; ok && now.Sub(last) < apiKeyTouchEvery {
		k.mu.Unlock()
		return
	}
	k.touched[id] = now
	k.mu.Unlock()
	_ = k.Store.UpdateAPIKey(id, func(b []byte) ([]byte, error) {
		var rec APIKey
		if err := json.Unmarshal(b, &rec); err != nil {
			return nil, err
		}
		rec.LastUsed = now.UTC().Truncate(time.Second)
		return json.Marshal(rec)
	})
}

// List returns user's keys, newest first, expired ones included until
// APIKeyKeepExpired has passed; older ones are removed on the way.
func (k *APIKeys) List(user string) ([]APIKey, error) {
	all, err := k.Store.APIKeys()
	if err != nil {
		return nil, fmt.Errorf("listing API keys: %w", err)
	}
	now := k.now()
	var out []APIKey
	for _, b := range all {
		var rec APIKey
		if json.Unmarshal(b, &rec) != nil || rec.User != user {
			continue
		}
		if now.Sub(rec.Expires) > APIKeyKeepExpired {
			// Best effort: a key left behind is refused anyway, and the
			// next listing tries again.
			if k.Store.DeleteAPIKey(rec.ID) == nil {
				k.forget(rec.ID)
			}
			continue
		}
		out = append(out, rec)
	}
	slices.SortFunc(out, func(a, b APIKey) int { return b.Created.Compare(a.Created) })
	return out, nil
}

// Revoke deletes user's key id; someone else's key is ErrAPIKeyNotFound,
// so that IDs of other users' keys cannot be probed.
func (k *APIKeys) Revoke(user, id string) error {
	if !validAPIKeyID(id) {
		return fmt.Errorf("%w: %q", ErrAPIKeyNotFound, id)
	}
	b, err := k.Store.APIKey(id)
	if err != nil {
		return err
	}
	var rec APIKey
	if err := json.Unmarshal(b, &rec); err != nil {
		return fmt.Errorf("API key %s: %w", id, err)
	}
	if rec.User != user {
		return fmt.Errorf("%w: %s", ErrAPIKeyNotFound, id)
	}
	if err := k.Store.DeleteAPIKey(id); err != nil {
		return fmt.Errorf("revoking API key %s: %w", id, err)
	}
	k.forget(id)
	return nil
}

// forget drops what touch remembers of a deleted key.
func (k *APIKeys) forget(id string) {
	k.mu.Lock()
	delete(k.touched, id)
	k.mu.Unlock()
}

// apiKeyID returns the ID part of a key that has the shape of one.
func apiKeyID(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, APIKeyPrefix)
	if !ok {
		return "", false
	}
	id, secret, ok := strings.Cut(rest, "_")
	if !ok || len(secret) != 43 {
		return "", false
	}
	return id, validAPIKeyID(id)
}

// validAPIKeyID: 16 lower-case hex digits, safe in a storage key.
func validAPIKeyID(id string) bool {
	if len(id) != 16 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil && strings.ToLower(id) == id
}

// IsAPIKey reports whether s has the shape of an API key.
func IsAPIKey(s string) bool {
	_, ok := apiKeyID(s)
	return ok
}

func hashKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// days writes a lifetime as users give it on the page.
func days(d time.Duration) string {
	if d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%d days", d/(24*time.Hour))
	}
	return d.String()
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

func randomBytes(n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("random: %w", err)
	}
	return b, nil
}
