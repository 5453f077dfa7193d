package ldapauth

// Successful logins remembered for a short while. Clients send Basic
// credentials with every request (a push is dozens), and each login is
// three or four round trips to the directory. What it costs: a password
// changed, an account disabled or a group membership changed in the
// directory takes effect here after at most the TTL for credentials used
// within it. Failures are never remembered, so a user who just fixed a
// password or was just added gets in at once, and the entries are keyed
// by an HMAC under a key made at start-up, never by the password.

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"slices"
	"sync"
	"time"

	"github.com/caddy-oci/caddy-oci/authscope"
)

// cacheMax bounds the remembered logins.
const cacheMax = 4096

type cache struct {
	ttl    time.Duration
	secret []byte

	mu   sync.Mutex
	good map[[sha256.Size]byte]remembered
}

type remembered struct {
	id    authscope.Identity
	until time.Time
}

func newCache(ttl time.Duration) *cache {
	k := make([]byte, 32)
	_, _ = rand.Read(k) // never fails (crypto/rand)
	return &cache{ttl: ttl, secret: k, good: map[[sha256.Size]byte]remembered{}}
}

func (c *cache) key(user, password string) [sha256.Size]byte {
	m := hmac.New(sha256.New, c.secret)
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(user)))
	m.Write(n[:])
	m.Write([]byte(user))
	m.Write([]byte(password))
	var k [sha256.Size]byte
	m.Sum(k[:0])
	return k
}

func (c *cache) get(k [sha256.Size]byte) (authscope.Identity, bool) {
	if c.ttl <= 0 {
		return authscope.Identity{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.good[k]
	if !ok {
		return authscope.Identity{}, false
	}
	if !time.Now().Before(r.until) {
		delete(c.good, k)
		return authscope.Identity{}, false
	}
	id := r.id
	id.Groups = slices.Clone(id.Groups)
	return id, true
}

func (c *cache) put(k [sha256.Size]byte, id authscope.Identity) {
	if c.ttl <= 0 {
		return
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.good) >= cacheMax {
		for k, r := range c.good {
			if !now.Before(r.until) {
				delete(c.good, k)
			}
		}
		if len(c.good) >= cacheMax {
			clear(c.good)
		}
	}
	id.Groups = slices.Clone(id.Groups)
	c.good[k] = remembered{id: id, until: now.Add(c.ttl)}
}

// randomHex is n random bytes as hex.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
