// Package ldapauth checks Basic credentials against an LDAP directory
// (OpenLDAP, 389-ds, FreeIPA, Active Directory, lldap, ...) as an
// authscope.Directory: it binds as a service account, finds the one entry
// whose user attribute equals the user name, binds as that entry with the
// password, and reads the user's groups from an attribute of the entry
// (memberOf) or from a group search.
//
// A directory that cannot be reached, times out or refuses the service
// account is authscope.ErrUnavailable (the registry answers 503); only the
// user's own bind or search deciding against them is
// authscope.ErrBadCredentials (401).
package ldapauth

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"
	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/authscope"
)

// Defaults of Config.
const (
	DefaultUserAttribute      = "uid"
	DefaultGroupsAttribute    = "memberOf"
	DefaultGroupFilter        = "(|(member={dn})(uniqueMember={dn})(memberUid={user}))"
	DefaultGroupNameAttribute = "cn"
	DefaultDialTimeout        = 5 * time.Second
	DefaultTimeout            = 5 * time.Second
	DefaultMaxConnections     = 8
)

// MaxUserLength bounds the user names sent to the directory.
const MaxUserLength = 256

// maxGroups bounds the groups read for one user.
const maxGroups = 1000

// MaxAnswerBytes bounds one message from the directory: go-ldap reads a
// message whole before anything looks at it, and its BER reader's own
// bound is 2 GiB, which a broken or hostile directory could send within
// one request's timeout. An entry with thousands of memberOf values is
// well under a megabyte.
const MaxAnswerBytes = 8 << 20

func init() {
	// The BER reader's bound is a package variable; only LDAP uses it.
	ber.MaxPacketLengthBytes = MaxAnswerBytes
}

// Config says how to reach the directory and find users and groups.
type Config struct {
	// URL is ldap://host[:port] or ldaps://host[:port].
	URL string
	// StartTLS upgrades an ldap:// connection to TLS before anything is
	// sent.
	StartTLS bool
	// TLS is used for ldaps:// and StartTLS: RootCAs, and
	// InsecureSkipVerify only when the operator asked for it. ServerName
	// defaults to the URL's host. Nil: the system's roots.
	TLS *tls.Config

	// BindDN and BindPassword are the service account that searches. Both
	// empty: searches are anonymous.
	BindDN, BindPassword string

	// BaseDN is where users are searched: its whole subtree, or with
	// OneLevel the entries directly below it.
	BaseDN string
	// OneLevel searches users only directly below BaseDN, not in the
	// OUs under it (zot's search without subtreeSearch).
	OneLevel bool
	// UserAttribute holds the user name. Default: uid.
	UserAttribute string
	// UserFilter, if set, is ANDed to the user search, e.g.
	// (objectClass=inetOrgPerson) or (memberOf=cn=registry,ou=groups,...).
	UserFilter string

	// GroupsAttribute is the user entry's attribute that lists the
	// user's groups by DN (memberOf), used without GroupBaseDN; each
	// group's name is the value of its DN's first component (the cn of
	// cn=devs,ou=groups,...). Default: memberOf.
	GroupsAttribute string
	// GroupBaseDN, if set, makes groups come from a search there instead
	// (subtree), with GroupFilter, in which {dn} is the user's DN and
	// {user} the user name, both escaped. Default filter:
	// (|(member={dn})(uniqueMember={dn})(memberUid={user})).
	GroupBaseDN, GroupFilter string
	// GroupNameAttribute names a group found by the group search.
	// Default: cn.
	GroupNameAttribute string
	// GroupsByDN names each group by its whole DN as the directory
	// spells it (a GroupsAttribute value, or a found group's DN), as zot
	// does, instead of by one name: then cn=admins in an OU anyone may
	// create groups in is not cn=admins,ou=groups.
	GroupsByDN bool
	// NoGroups reads no groups from the directory: a user's groups are
	// then only those the registry's own config lists it in (zot
	// without userGroupAttribute). GroupsAttribute and GroupBaseDN are
	// not used.
	NoGroups bool

	// DialTimeout bounds connecting, TLS included; Timeout each request.
	DialTimeout, Timeout time.Duration
	// MaxConnections bounds the open connections; a login waits up to
	// Timeout for one. Default: 8.
	MaxConnections int
	// CacheTTL is how long a successful login is remembered (0: not at
	// all). Failures are never remembered.
	CacheTTL time.Duration

	// Logger gets what the operator should know (an ambiguous user).
	Logger *zap.Logger
}

// Directory is an LDAP directory as an authscope.Directory.
type Directory struct {
	c        Config
	hostPort string
	tls      *tls.Config
	pool     *pool
	// binds bounds the logins and lookups at once to the pool's size, as
	// htpasswd's comparisons are bounded: one waits at most
	// authscope.TurnWait for its turn, then is answered 429, unchecked.
	// The pool alone made a login wait only timeout for a connection and
	// then answered it as an outage (503), so a flood through many
	// addresses on a working directory turned into outage answers.
	binds *authscope.Turns
	// known are turns of their own, as many again, for the logins of a
	// user from an address that logged in to it before and for the owner
	// lookups of API keys (verified first): made-up names from many
	// addresses take every turn of binds, and such a login waited behind
	// them the whole TurnWait, then got 429, as htpasswd's did before its
	// own (Htpasswd.CheckFrom). The pool still bounds the connections.
	known *authscope.Turns
	cache *cache
	// lookups remembers Lookup's answers (an empty User: no such user).
	lookups *cache
	// noSuchDN is bound with the password of a user who is not found, so
	// that the answer takes the same round trips as a wrong password.
	noSuchDN string
}

var attributeName = regexp.MustCompile(`^([A-Za-z][A-Za-z0-9-]*|[0-9]+(\.[0-9]+)+)$`)

// New checks c and returns its Directory. Nothing is contacted until the
// first login, so a directory that is down does not stop the server.
func New(c Config) (*Directory, error) {
	u, err := url.Parse(c.URL)
	if err != nil {
		return nil, fmt.Errorf("url: %w", err)
	}
	if u.Scheme != "ldap" && u.Scheme != "ldaps" {
		return nil, fmt.Errorf("url %q: scheme must be ldap or ldaps", c.URL)
	}
	if u.Host == "" || u.Hostname() == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("url %q: want ldap[s]://host[:port] and nothing else", c.URL)
	}
	if c.StartTLS && u.Scheme == "ldaps" {
		return nil, errors.New("start_tls is for ldap:// URLs: ldaps:// is TLS already")
	}
	d := &Directory{c: c, hostPort: u.Host}
	if u.Port() == "" {
		port := "389"
		if u.Scheme == "ldaps" {
			port = "636"
		}
		d.hostPort = net.JoinHostPort(u.Hostname(), port)
	}
	if c.BaseDN == "" {
		return nil, errors.New("base_dn is required")
	}
	if _, err := ldap.ParseDN(c.BaseDN); err != nil {
		return nil, fmt.Errorf("base_dn %q: %w", c.BaseDN, err)
	}
	if (c.BindDN == "") != (c.BindPassword == "") {
		return nil, errors.New("bind_dn and bind_password go together (both empty: anonymous searches)")
	}
	if c.BindDN != "" {
		if _, err := ldap.ParseDN(c.BindDN); err != nil {
			return nil, fmt.Errorf("bind_dn %q: %w", c.BindDN, err)
		}
	}
	if c.NoGroups && (c.GroupsAttribute != "" || c.GroupBaseDN != "" || c.GroupFilter != "" || c.GroupNameAttribute != "" || c.GroupsByDN) {
		return nil, errors.New("no_groups reads no groups: groups_attribute, group_base_dn, group_filter, group_name_attribute and group_names do not go with it")
	}
	d.c.UserAttribute = orDefault(c.UserAttribute, DefaultUserAttribute)
	d.c.GroupsAttribute = orDefault(c.GroupsAttribute, DefaultGroupsAttribute)
	d.c.GroupNameAttribute = orDefault(c.GroupNameAttribute, DefaultGroupNameAttribute)
	for what, a := range map[string]string{"user_attribute": d.c.UserAttribute, "groups_attribute": d.c.GroupsAttribute, "group_name_attribute": d.c.GroupNameAttribute} {
		if !attributeName.MatchString(a) {
			return nil, fmt.Errorf("%s %q: not an attribute name", what, a)
		}
	}
	if c.UserFilter != "" {
		if _, err := ldap.CompileFilter(c.UserFilter); err != nil {
			return nil, fmt.Errorf("user_filter %q: %w", c.UserFilter, err)
		}
	}
	if c.GroupBaseDN != "" {
		if _, err := ldap.ParseDN(c.GroupBaseDN); err != nil {
			return nil, fmt.Errorf("group_base_dn %q: %w", c.GroupBaseDN, err)
		}
		d.c.GroupFilter = orDefault(c.GroupFilter, DefaultGroupFilter)
		if _, err := ldap.CompileFilter(groupFilter(d.c.GroupFilter, "cn=x", "x")); err != nil {
			return nil, fmt.Errorf("group_filter %q: %w", d.c.GroupFilter, err)
		}
	} else if c.GroupFilter != "" {
		return nil, errors.New("group_filter needs group_base_dn")
	}
	if c.DialTimeout < 0 || c.Timeout < 0 || c.MaxConnections < 0 || c.CacheTTL < 0 {
		return nil, errors.New("timeouts, max_connections and cache_ttl must not be negative")
	}
	if d.c.DialTimeout == 0 {
		d.c.DialTimeout = DefaultDialTimeout
	}
	if d.c.Timeout == 0 {
		d.c.Timeout = DefaultTimeout
	}
	if d.c.MaxConnections == 0 {
		d.c.MaxConnections = DefaultMaxConnections
	}
	if d.c.Logger == nil {
		d.c.Logger = zap.NewNop()
	}
	if u.Scheme == "ldaps" || c.StartTLS {
		d.tls = &tls.Config{MinVersion: tls.VersionTLS12}
		if c.TLS != nil {
			d.tls = c.TLS.Clone()
		}
		if d.tls.ServerName == "" {
			d.tls.ServerName = u.Hostname()
		}
	}
	d.noSuchDN = "cn=caddy-oci-no-such-user-" + randomHex(8) + "," + c.BaseDN
	d.pool = newPool(d.c.MaxConnections, d.dial)
	d.binds = authscope.NewTurns(func() int { return d.c.MaxConnections })
	d.known = authscope.NewTurns(func() int { return d.c.MaxConnections })
	d.cache = newCache(d.c.CacheTTL)
	d.lookups = newCache(d.c.CacheTTL)
	return d, nil
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// groupFilter puts the escaped user DN and name into the group filter.
func groupFilter(f, dn, user string) string {
	return strings.NewReplacer("{dn}", ldap.EscapeFilter(dn), "{user}", ldap.EscapeFilter(user)).Replace(f)
}

// Close closes the idle connections; logins after it still work.
func (d *Directory) Close() { d.pool.close() }

// Login implements authscope.Directory.
func (d *Directory) Login(ctx context.Context, user, password string) (authscope.Identity, error) {
	return d.LoginFrom(ctx, user, password, false)
}

// LoginFrom implements authscope.DirectoryFrom: Login, with the known
// turns too for a login from an address that logged in to user before.
func (d *Directory) LoginFrom(ctx context.Context, user, password string, knownAddress bool) (authscope.Identity, error) {
	if err := checkInput(user, password); err != nil {
		return authscope.Identity{}, err
	}
	key := d.cache.key(user, password)
	if id, ok := d.cache.get(key); ok {
		return id, nil
	}
	var own *authscope.Turns // nil: none
	if knownAddress {
		own = d.known
	}
	release, err := d.binds.Take(ctx, own)
	if err != nil {
		return authscope.Identity{}, err
	}
	defer release()
	// The same pair accepted while this one waited (a burst of jobs with
	// one account's credentials): no bind needed.
	if id, ok := d.cache.get(key); ok {
		return id, nil
	}
	id, err := d.login(ctx, user, password)
	if err != nil {
		return authscope.Identity{}, err
	}
	d.cache.put(key, id)
	return id, nil
}

// Remembers reports whether user and password logged in within cache_ttl
// (the Authorizer does not count such a login against guessing bounds).
func (d *Directory) Remembers(user, password string) bool {
	_, ok := d.cache.get(d.cache.key(user, password))
	return ok
}

// checkInput refuses, before anything is sent, what no directory should
// see. An empty password above all: a simple bind with a DN and no
// password is an "unauthenticated bind" that LDAP servers answer with
// success, whoever the DN is.
func checkInput(user, password string) error {
	switch {
	case password == "":
		return fmt.Errorf("%w: empty password", authscope.ErrBadCredentials)
	case user == "":
		return fmt.Errorf("%w: empty user name", authscope.ErrBadCredentials)
	case len(user) > MaxUserLength:
		return fmt.Errorf("%w: user name longer than %d bytes", authscope.ErrBadCredentials, MaxUserLength)
	case !utf8.ValidString(user) || !utf8.ValidString(password):
		return fmt.Errorf("%w: not UTF-8", authscope.ErrBadCredentials)
	case strings.ContainsFunc(user, unicode.IsControl):
		return fmt.Errorf("%w: control character in user name", authscope.ErrBadCredentials)
	}
	return nil
}

// login checks the credentials on a pooled connection. A pooled
// connection that the server closed since (a restart, an idle timeout)
// fails on first use: one fresh connection then decides.
func (d *Directory) login(ctx context.Context, user, password string) (authscope.Identity, error) {
	return d.onConn(ctx, func(c *ldap.Conn) (authscope.Identity, error) { return d.check(c, user, password) })
}

// onConn runs do on a pooled connection, and once more on a fresh one
// when the pooled one turns out broken.
func (d *Directory) onConn(ctx context.Context, do func(*ldap.Conn) (authscope.Identity, error)) (authscope.Identity, error) {
	for {
		c, reused, err := d.pool.get(ctx, d.c.Timeout)
		if err != nil {
			return authscope.Identity{}, err
		}
		id, err := do(c)
		if err == nil || !broken(err) {
			d.pool.put(c)
			return id, err
		}
		d.pool.discard(c)
		if !reused || ctx.Err() != nil {
			return id, err
		}
	}
}

// check is one login on c: service bind, user search, user bind, groups.
func (d *Directory) check(c *ldap.Conn, user, password string) (authscope.Identity, error) {
	if err := d.bindService(c); err != nil {
		return authscope.Identity{}, err
	}
	entry, err := d.findUser(c, user)
	if errors.Is(err, authscope.ErrNoSuchUser) {
		// The same round trip as a wrong password, so that the answer
		// does not tell who exists; its result is not used.
		berr := c.Bind(d.noSuchDN, password)
		if berr != nil && broken(berr) {
			return authscope.Identity{}, d.unavailable("binding", berr)
		}
		return authscope.Identity{}, fmt.Errorf("%w: %w", authscope.ErrBadCredentials, err)
	}
	if err != nil {
		return authscope.Identity{}, err
	}
	if err := c.Bind(entry.DN, password); err != nil {
		if code, ok := resultCode(err); ok && code != ldap.LDAPResultBusy && code != ldap.LDAPResultUnavailable && code != ldap.LDAPResultOther {
			return authscope.Identity{}, fmt.Errorf("%w: bind as %s: %w", authscope.ErrBadCredentials, entry.DN, err)
		}
		return authscope.Identity{}, d.unavailable("binding as the user", err)
	}
	if d.c.GroupBaseDN != "" {
		if err := d.bindService(c); err != nil {
			return authscope.Identity{}, err
		}
	}
	return d.identity(c, entry, user)
}

// findUser searches the one entry of user, bound as the service. None is
// authscope.ErrNoSuchUser, several are refused as bad credentials.
func (d *Directory) findUser(c *ldap.Conn, user string) (*ldap.Entry, error) {
	filter := "(" + d.c.UserAttribute + "=" + ldap.EscapeFilter(user) + ")"
	if d.c.UserFilter != "" {
		filter = "(&" + filter + d.c.UserFilter + ")"
	}
	attrs := []string{d.c.UserAttribute}
	if d.c.GroupBaseDN == "" && !d.c.NoGroups {
		attrs = append(attrs, d.c.GroupsAttribute)
	}
	scope := ldap.ScopeWholeSubtree
	if d.c.OneLevel {
		scope = ldap.ScopeSingleLevel
	}
	res, err := c.Search(ldap.NewSearchRequest(d.c.BaseDN, scope, ldap.NeverDerefAliases,
		2, d.timeLimit(), false, filter, attrs, nil))
	switch {
	case ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded) || (err == nil && len(res.Entries) > 1):
		d.c.Logger.Warn("ldap: several entries have this user name; login refused",
			zap.String("user", user), zap.String("filter", filter), zap.String("base_dn", d.c.BaseDN))
		return nil, fmt.Errorf("%w: several entries for user %q", authscope.ErrBadCredentials, user)
	case err != nil:
		return nil, d.unavailable("searching the user", err)
	case len(res.Entries) == 0:
		return nil, fmt.Errorf("%w: %q", authscope.ErrNoSuchUser, user)
	}
	return res.Entries[0], nil
}

// identity is the user of entry with its groups, read from the entry or
// searched with the service's bind.
func (d *Directory) identity(c *ldap.Conn, entry *ldap.Entry, typed string) (authscope.Identity, error) {
	id := authscope.Identity{User: canonicalName(entry, d.c.UserAttribute, typed), Method: authscope.MethodLDAP}
	if d.c.NoGroups {
		return id, nil
	}
	if d.c.GroupBaseDN == "" {
		id.Groups = groupNames(entry.GetEqualFoldAttributeValues(d.c.GroupsAttribute), d.c.GroupsByDN)
		return id, nil
	}
	res, err := c.Search(ldap.NewSearchRequest(d.c.GroupBaseDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
		maxGroups, d.timeLimit(), false, groupFilter(d.c.GroupFilter, entry.DN, id.User), []string{d.c.GroupNameAttribute}, nil))
	if err != nil && !ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded) {
		return authscope.Identity{}, d.unavailable("searching the user's groups", err)
	}
	for _, g := range res.Entries {
		names := g.GetEqualFoldAttributeValues(d.c.GroupNameAttribute)
		if d.c.GroupsByDN {
			names = []string{g.DN}
		}
		for _, name := range names {
			if name != "" && !slices.Contains(id.Groups, name) {
				id.Groups = append(id.Groups, name)
			}
		}
	}
	return id, nil
}

// Lookup implements authscope.DirectoryUsers: user as the directory
// holds it now, found and its groups read with the service account (no
// password of the user). An answer, "no such user" included, is
// remembered for cache_ttl, like a login.
func (d *Directory) Lookup(ctx context.Context, user string) (authscope.Identity, error) {
	if err := checkInput(user, "-"); err != nil {
		return authscope.Identity{}, fmt.Errorf("%w: %w", authscope.ErrNoSuchUser, err)
	}
	key := d.lookups.key(user, "")
	if id, ok := d.lookups.get(key); ok {
		if id.User == "" {
			return authscope.Identity{}, fmt.Errorf("%w: %q", authscope.ErrNoSuchUser, user)
		}
		return id, nil
	}
	// The known turns too: only a verified API key asks (keyOwnerInDirectory).
	release, err := d.binds.Take(ctx, d.known)
	if err != nil {
		return authscope.Identity{}, err
	}
	defer release()
	id, err := d.onConn(ctx, func(c *ldap.Conn) (authscope.Identity, error) {
		if err := d.bindService(c); err != nil {
			return authscope.Identity{}, err
		}
		entry, err := d.findUser(c, user)
		if err != nil {
			return authscope.Identity{}, err
		}
		return d.identity(c, entry, user)
	})
	switch {
	case errors.Is(err, authscope.ErrNoSuchUser):
		d.lookups.put(key, authscope.Identity{})
		return authscope.Identity{}, err
	case errors.Is(err, authscope.ErrBadCredentials):
		// Several entries: no one the directory can name.
		return authscope.Identity{}, fmt.Errorf("%w: %w", authscope.ErrNoSuchUser, err)
	case err != nil:
		return authscope.Identity{}, err
	}
	d.lookups.put(key, id)
	return id, nil
}

// bindService binds as the service account, or anonymously without one.
// A refusal is the operator's to fix, not the caller's: unavailable.
func (d *Directory) bindService(c *ldap.Conn) error {
	var err error
	if d.c.BindDN == "" {
		err = c.UnauthenticatedBind("")
	} else {
		err = c.Bind(d.c.BindDN, d.c.BindPassword)
	}
	if err != nil {
		if ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials) {
			return d.unavailable("binding as bind_dn (check bind_dn and bind_password)", err)
		}
		return d.unavailable("binding as bind_dn", err)
	}
	return nil
}

// timeLimit is the server-side limit of a search, in whole seconds.
func (d *Directory) timeLimit() int {
	return max(1, int(d.c.Timeout/time.Second))
}

func (d *Directory) unavailable(what string, err error) error {
	return fmt.Errorf("%w: ldap %s: %s: %w", authscope.ErrUnavailable, d.hostPort, what, err)
}

// canonicalName is the user name as the directory spells it: LDAP
// matches uid without regard to case (and spaces), and policies match
// names exactly, so "Alice" and "alice " are both the directory's alice.
func canonicalName(e *ldap.Entry, attr, typed string) string {
	vals := e.GetEqualFoldAttributeValues(attr)
	for _, v := range vals {
		if strings.EqualFold(v, typed) {
			return v
		}
	}
	if len(vals) > 0 && vals[0] != "" {
		return vals[0]
	}
	return typed
}

// groupNames turns memberOf values (group DNs) into group names: the
// value of each DN's first component, or with byDN the DN itself. A value
// that is no DN is a name.
func groupNames(vals []string, byDN bool) []string {
	var out []string
	for _, v := range vals {
		name := v
		if dn, err := ldap.ParseDN(v); err == nil && !byDN && len(dn.RDNs) > 0 && len(dn.RDNs[0].Attributes) > 0 {
			name = dn.RDNs[0].Attributes[0].Value
		}
		if name != "" && !slices.Contains(out, name) {
			out = append(out, name)
		}
		if len(out) == maxGroups {
			break
		}
	}
	return out
}

// resultCode is the LDAP result code the server answered with; false when
// err is the client's (the connection failed or timed out).
func resultCode(err error) (uint16, bool) {
	var le *ldap.Error
	if !errors.As(err, &le) || (le.ResultCode >= ldap.ErrorNetwork && le.ResultCode < 300) {
		return 0, false
	}
	return le.ResultCode, true
}

// broken reports whether err leaves the connection unusable: no answer
// from the server (network, timeout) rather than an LDAP result.
func broken(err error) bool {
	_, answered := resultCode(err)
	return !answered
}

// dial opens a connection, TLS or StartTLS done, with DialTimeout over
// the whole of it.
func (d *Directory) dial(ctx context.Context) (*ldap.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, d.c.DialTimeout)
	defer cancel()
	nc, err := (&net.Dialer{}).DialContext(ctx, "tcp", d.hostPort)
	if err != nil {
		return nil, d.unavailable("connecting", err)
	}
	isTLS := strings.HasPrefix(d.c.URL, "ldaps:")
	if isTLS {
		tc := tls.Client(nc, d.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, d.unavailable("TLS handshake", err)
		}
		nc = tc
	}
	c := ldap.NewConn(nc, isTLS)
	c.Start()
	c.SetTimeout(d.c.Timeout)
	if d.c.StartTLS {
		// StartTLS's handshake has no timeout of its own; the deadline on
		// the socket bounds it and is lifted once it is done.
		dl, _ := ctx.Deadline()
		_ = nc.SetDeadline(dl)
		err := c.StartTLS(d.tls)
		_ = nc.SetDeadline(time.Time{})
		if err != nil {
			c.Close()
			return nil, d.unavailable("StartTLS", err)
		}
	}
	return c, nil
}

var (
	_ authscope.Directory      = (*Directory)(nil)
	_ authscope.DirectoryUsers = (*Directory)(nil)
	_ authscope.DirectoryFrom  = (*Directory)(nil)
)
