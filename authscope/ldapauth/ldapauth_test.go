package ldapauth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/authscope/ldapauth/slapdtest"
)

// directory is a slapd with:
//
//	alice (alice-pw) in devs and registry
//	bob (bob-pw) in no group
//	carol (carol-pw) in devs, and in the posixGroup posix-devs by memberUid
//	we(ird)* (weird-pw): a name full of filter syntax
//	jürgen (jürgen-pw): UTF-8, escaped octet by octet in the filter
//	nopass: no password at all
//	twin (twin-pw) twice, under ou=people and ou=more
func directory(t *testing.T) *slapdtest.Server {
	t.Helper()
	s := slapdtest.Start(t)
	s.AddUser(t, "alice", "alice-pw")
	s.AddUser(t, "bob", "bob-pw")
	s.AddUser(t, "carol", "carol-pw")
	s.AddUser(t, "we(ird)*", "weird-pw")
	s.AddUser(t, "jürgen", "jürgen-pw")
	s.AddUser(t, "nopass", "")
	s.AddUser(t, "twin", "twin-pw")
	admin := s.Admin(t)
	add := func(dn string, attrs map[string][]string) {
		r := ldap.NewAddRequest(dn, nil)
		for k, v := range attrs {
			r.Attribute(k, v)
		}
		if err := admin.Add(r); err != nil {
			t.Fatalf("add %s: %v", dn, err)
		}
	}
	add("ou=more,"+slapdtest.BaseDN, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {"more"}})
	add("uid=twin,ou=more,"+slapdtest.BaseDN, map[string][]string{"objectClass": {"inetOrgPerson"}, "uid": {"twin"}, "cn": {"twin"}, "sn": {"twin"}, "userPassword": {"twin-pw"}})
	s.AddGroup(t, "devs", "alice", "carol")
	s.AddGroup(t, "registry", "alice")
	add(slapdtest.GroupDN("posix-devs"), map[string][]string{"objectClass": {"posixGroup"}, "cn": {"posix-devs"}, "gidNumber": {"5000"}, "memberUid": {"carol"}})
	return s
}

func baseConfig(s *slapdtest.Server) Config {
	return Config{
		URL:    s.URL,
		BindDN: slapdtest.ReaderDN, BindPassword: slapdtest.ReaderPassword,
		BaseDN:      slapdtest.BaseDN,
		DialTimeout: 2 * time.Second, Timeout: 2 * time.Second,
	}
}

func newDirectory(t *testing.T, c Config) *Directory {
	t.Helper()
	d, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// TestLogin: who gets in, as whom, with which groups, and what is refused
// as bad credentials (401), never as an unavailable directory.
func TestLogin(t *testing.T) {
	s := directory(t)
	memberOf := newDirectory(t, baseConfig(s))
	gc := baseConfig(s)
	gc.GroupBaseDN = slapdtest.GroupsDN
	search := newDirectory(t, gc)
	fc := baseConfig(s)
	fc.UserFilter = "(memberOf=" + slapdtest.GroupDN("registry") + ")"
	filtered := newDirectory(t, fc)
	nc := baseConfig(s)
	nc.NoGroups = true
	noGroups := newDirectory(t, nc)

	for _, tc := range []struct {
		name           string
		d              *Directory
		user, password string
		wantUser       string   // empty: refused
		wantGroups     []string // sorted
	}{
		{"memberOf groups", memberOf, "alice", "alice-pw", "alice", []string{"devs", "registry"}},
		{"no groups", memberOf, "bob", "bob-pw", "bob", nil},
		{"name as the directory spells it", memberOf, "ALICE", "alice-pw", "alice", []string{"devs", "registry"}},
		{"filter syntax in a real name", memberOf, "we(ird)*", "weird-pw", "we(ird)*", nil},
		{"UTF-8 name", memberOf, "jürgen", "jürgen-pw", "jürgen", nil},
		{"group search", search, "alice", "alice-pw", "alice", []string{"devs", "registry"}},
		{"group search by memberUid", search, "carol", "carol-pw", "carol", []string{"devs", "posix-devs"}},
		{"user filter lets in", filtered, "alice", "alice-pw", "alice", []string{"devs", "registry"}},
		{"no_groups: memberOf not read", noGroups, "alice", "alice-pw", "alice", nil},

		{"wrong password", memberOf, "alice", "bob-pw", "", nil},
		{"unknown user", memberOf, "mallory", "alice-pw", "", nil},
		{"empty password", memberOf, "alice", "", "", nil},
		{"empty password, no password set", memberOf, "nopass", "", "", nil},
		{"no password set", memberOf, "nopass", "x", "", nil},
		{"two entries", memberOf, "twin", "twin-pw", "", nil},
		{"user filter keeps out", filtered, "bob", "bob-pw", "", nil},
		// Injections: unescaped, each of these would find alice (or
		// everyone), and alice's password would then let them in.
		{"wildcard", memberOf, "al*", "alice-pw", "", nil},
		{"star", memberOf, "*", "alice-pw", "", nil},
		{"filter injection", memberOf, "*)(uid=alice", "alice-pw", "", nil},
		{"or injection", memberOf, "alice)(|(uid=*", "alice-pw", "", nil},
		{"NUL", memberOf, "alice\x00", "alice-pw", "", nil},
		{"not UTF-8", memberOf, "al\xffice", "alice-pw", "", nil},
		{"DN as name", memberOf, slapdtest.UserDN("alice"), "alice-pw", "", nil},
		{"too long", memberOf, strings.Repeat("a", MaxUserLength+1), "alice-pw", "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := tc.d.Login(context.Background(), tc.user, tc.password)
			if tc.wantUser == "" {
				if err == nil {
					t.Fatalf("logged in as %+v", id)
				}
				if !errors.Is(err, authscope.ErrBadCredentials) || errors.Is(err, authscope.ErrUnavailable) {
					t.Fatalf("err = %v, want only bad credentials", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id.User != tc.wantUser || id.Method != authscope.MethodLDAP || !slices.Equal(sorted(id.Groups), tc.wantGroups) {
				t.Fatalf("identity %+v, want %s in %v", id, tc.wantUser, tc.wantGroups)
			}
		})
	}
}

// TestEmptyPasswordSendsNothing: an empty password is refused before
// anything is sent (LDAP takes a DN with an empty password for an
// unauthenticated bind, which succeeds): here at a port where nobody
// listens, so any attempt to connect would be ErrUnavailable.
func TestEmptyPasswordSendsNothing(t *testing.T) {
	d, err := New(Config{URL: "ldap://127.0.0.1:1", BaseDN: slapdtest.BaseDN, DialTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Login(context.Background(), "alice", ""); !errors.Is(err, authscope.ErrBadCredentials) || errors.Is(err, authscope.ErrUnavailable) {
		t.Fatalf("empty password: %v", err)
	}
	if _, err := d.Login(context.Background(), "alice", "pw"); !errors.Is(err, authscope.ErrUnavailable) {
		t.Fatalf("with a password: %v, want unavailable", err)
	}
}

// TestUnavailable: a directory that is down, hung or refuses the service
// account is ErrUnavailable, never bad credentials; once it is back, the
// same Directory logs users in again (its pooled connections died with
// the server).
func TestUnavailable(t *testing.T) {
	s := directory(t)
	c := baseConfig(s)
	c.Timeout = 500 * time.Millisecond
	d := newDirectory(t, c)
	login := func() error {
		_, err := d.Login(context.Background(), "alice", "alice-pw")
		return err
	}
	if err := login(); err != nil {
		t.Fatal(err)
	}

	s.Stop()
	err := login()
	if !errors.Is(err, authscope.ErrUnavailable) || errors.Is(err, authscope.ErrBadCredentials) {
		t.Fatalf("stopped: %v", err)
	}
	s.Restart(t)
	if err := login(); err != nil {
		t.Fatalf("after restart: %v", err)
	}

	s.Pause(t)
	start := time.Now()
	err = login()
	s.Resume(t)
	if !errors.Is(err, authscope.ErrUnavailable) {
		t.Fatalf("paused: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("paused: answered after %s, timeout is %s", took, c.Timeout)
	}
	if err := login(); err != nil {
		t.Fatalf("after resume: %v", err)
	}

	wrong := baseConfig(s)
	wrong.BindPassword = "not-the-reader-pw"
	_, err = newDirectory(t, wrong).Login(context.Background(), "alice", "alice-pw")
	if !errors.Is(err, authscope.ErrUnavailable) || !strings.Contains(err.Error(), "bind_password") {
		t.Fatalf("service account refused: %v", err)
	}
	// This directory lets anonymous callers see nothing, not even the
	// base (slapd answers No Such Object): a configuration that can log
	// nobody in is the operator's to fix, not the user's.
	anon := baseConfig(s)
	anon.BindDN, anon.BindPassword = "", ""
	_, err = newDirectory(t, anon).Login(context.Background(), "alice", "alice-pw")
	if !errors.Is(err, authscope.ErrUnavailable) || !strings.Contains(err.Error(), "No Such Object") {
		t.Fatalf("anonymous search: %v", err)
	}
}

// TestTLS: ldaps:// and StartTLS with the CA of the server, refused
// without it unless insecure_skip_verify is asked for.
func TestTLS(t *testing.T) {
	s := directory(t)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(s.CAPEM)
	for _, tc := range []struct {
		name     string
		url      string
		startTLS bool
		tls      *tls.Config
		ok       bool
	}{
		{"ldaps with CA", s.TLSURL, false, &tls.Config{RootCAs: roots}, true},
		{"StartTLS with CA", s.URL, true, &tls.Config{RootCAs: roots}, true},
		{"ldaps, system roots", s.TLSURL, false, nil, false},
		{"StartTLS, system roots", s.URL, true, nil, false},
		{"ldaps, other name", s.TLSURL, false, &tls.Config{RootCAs: roots, ServerName: "ldap.example"}, false},
		{"ldaps insecure", s.TLSURL, false, &tls.Config{InsecureSkipVerify: true}, true},
		{"StartTLS on ldaps", s.TLSURL, true, &tls.Config{RootCAs: roots}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := baseConfig(s)
			c.URL, c.StartTLS, c.TLS = tc.url, tc.startTLS, tc.tls
			d, err := New(c)
			if err != nil {
				if tc.ok {
					t.Fatal(err)
				}
				return
			}
			defer d.Close()
			id, err := d.Login(context.Background(), "alice", "alice-pw")
			if tc.ok && (err != nil || id.User != "alice") {
				t.Fatalf("%+v %v", id, err)
			}
			if !tc.ok && !errors.Is(err, authscope.ErrUnavailable) {
				t.Fatalf("untrusted server: %v", err)
			}
		})
	}
}

// TestCache: a good login is remembered for CacheTTL, a failure never;
// without a cache a changed password applies at once.
func TestCache(t *testing.T) {
	s := directory(t)
	c := baseConfig(s)
	c.CacheTTL = time.Minute
	cached := newDirectory(t, c)
	uncached := newDirectory(t, baseConfig(s))
	ctx := context.Background()
	for _, d := range []*Directory{cached, uncached} {
		if _, err := d.Login(ctx, "bob", "bob-pw"); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Login(ctx, "bob", "new-pw"); err == nil {
			t.Fatal("new password before it was set")
		}
	}
	s.SetPassword(t, "bob", "new-pw")
	if _, err := cached.Login(ctx, "bob", "bob-pw"); err != nil {
		t.Errorf("cached: old password within the TTL: %v", err)
	}
	if _, err := uncached.Login(ctx, "bob", "bob-pw"); err == nil {
		t.Error("uncached: old password still accepted")
	}
	for _, d := range []*Directory{cached, uncached} {
		if _, err := d.Login(ctx, "bob", "new-pw"); err != nil {
			t.Errorf("the new password, refused before it was set, is refused still: %v", err)
		}
	}
	// The cache answers for an outage only what it knew.
	s.Stop()
	if _, err := cached.Login(ctx, "bob", "new-pw"); err != nil {
		t.Errorf("cached login while down: %v", err)
	}
	if _, err := cached.Login(ctx, "alice", "alice-pw"); !errors.Is(err, authscope.ErrUnavailable) {
		t.Errorf("uncached login while down: %v", err)
	}
}

// TestPoolBounded: many concurrent logins never open more connections
// than MaxConnections, and all get their answer.
func TestPoolBounded(t *testing.T) {
	s := directory(t)
	c := baseConfig(s)
	c.MaxConnections = 2
	d := newDirectory(t, c)
	var open, most atomic.Int32
	dial := d.pool.dial
	d.pool.dial = func(ctx context.Context) (*ldap.Conn, error) {
		n := open.Add(1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		conn, err := dial(ctx)
		if err != nil {
			open.Add(-1)
		}
		return conn, err
	}
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for i := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			user, pw := "alice", "alice-pw"
			if i%2 == 1 {
				user, pw = "bob", "wrong"
			}
			_, err := d.Login(context.Background(), user, pw)
			if (i%2 == 0) != (err == nil) {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("login: %v", err)
	}
	if m := most.Load(); m > 2 || m == 0 {
		t.Errorf("opened %d connections, max_connections is 2", m)
	}
}

func TestNewRefuses(t *testing.T) {
	ok := Config{URL: "ldap://127.0.0.1", BaseDN: "dc=example,dc=org"}
	for name, mod := range map[string]func(*Config){
		"no url":                  func(c *Config) { c.URL = "" },
		"http url":                func(c *Config) { c.URL = "http://127.0.0.1" },
		"userinfo":                func(c *Config) { c.URL = "ldap://u:p@127.0.0.1" },
		"path":                    func(c *Config) { c.URL = "ldap://127.0.0.1/dc=example" },
		"query":                   func(c *Config) { c.URL = "ldap://127.0.0.1?x" },
		"start_tls on ldaps":      func(c *Config) { c.URL, c.StartTLS = "ldaps://127.0.0.1", true },
		"no base":                 func(c *Config) { c.BaseDN = "" },
		"bad base":                func(c *Config) { c.BaseDN = "not a dn" },
		"dn without password":     func(c *Config) { c.BindDN = "cn=reader,dc=example,dc=org" },
		"password without dn":     func(c *Config) { c.BindPassword = "pw" },
		"bad attribute":           func(c *Config) { c.UserAttribute = "uid)(x=*" },
		"bad filter":              func(c *Config) { c.UserFilter = "(objectClass=person" },
		"group filter, no base":   func(c *Config) { c.GroupFilter = "(member={dn})" },
		"bad group filter":        func(c *Config) { c.GroupBaseDN, c.GroupFilter = "ou=groups,dc=example,dc=org", "(member={dn}" },
		"no_groups, group search": func(c *Config) { c.NoGroups, c.GroupBaseDN = true, "ou=groups,dc=example,dc=org" },
		"no_groups, attribute":    func(c *Config) { c.NoGroups, c.GroupsAttribute = true, "memberOf" },
		"negative timeout":        func(c *Config) { c.Timeout = -1 },
		"negative max_connection": func(c *Config) { c.MaxConnections = -1 },
	} {
		c := ok
		mod(&c)
		if _, err := New(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := New(ok); err != nil {
		t.Fatal(err)
	}
}

// TestLookup: a user's groups without their password, with the service
// account, from memberOf or a group search; no such user is
// ErrNoSuchUser; answers are remembered for CacheTTL, so that an API key
// used for every request of a CI job does not ask the directory each
// time (here: still answered with the directory stopped).
func TestLookup(t *testing.T) {
	s := directory(t)
	ctx := context.Background()
	byAttr := newDirectory(t, baseConfig(s))
	c := baseConfig(s)
	c.GroupBaseDN = slapdtest.GroupsDN
	bySearch := newDirectory(t, c)
	for name, d := range map[string]*Directory{"memberOf": byAttr, "group search": bySearch} {
		id, err := d.Lookup(ctx, "Carol")
		if err != nil || id.User != "carol" || !slices.Contains(id.Groups, "devs") {
			t.Errorf("%s: carol: %+v %v", name, id, err)
		}
		for _, nobody := range []string{"nobody", "al*", "", "twin"} {
			if _, err := d.Lookup(ctx, nobody); !errors.Is(err, authscope.ErrNoSuchUser) {
				t.Errorf("%s: %q: %v, want ErrNoSuchUser", name, nobody, err)
			}
		}
	}

	c = baseConfig(s)
	c.CacheTTL = time.Minute
	cached := newDirectory(t, c)
	if _, err := cached.Lookup(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := cached.Lookup(ctx, "nobody"); !errors.Is(err, authscope.ErrNoSuchUser) {
		t.Fatal(err)
	}
	s.Stop()
	if id, err := cached.Lookup(ctx, "alice"); err != nil || !slices.Contains(id.Groups, "devs") {
		t.Errorf("alice remembered: %+v %v", id, err)
	}
	if _, err := cached.Lookup(ctx, "nobody"); !errors.Is(err, authscope.ErrNoSuchUser) {
		t.Errorf("nobody remembered: %v", err)
	}
	if _, err := byAttr.Lookup(ctx, "alice"); !errors.Is(err, authscope.ErrUnavailable) {
		t.Errorf("without cache, directory down: %v", err)
	}
}
