package caddymodule

// Config of the ldap part of an auth block and its provisioning into an
// ldapauth.Directory. How logins are checked lives in authscope/ldapauth.

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/authscope/ldapauth"
	"github.com/caddy-oci/caddy-oci/internal/configfile"
)

// DefaultLDAPCacheTTL is how long a successful LDAP login is remembered
// when CacheTTL is left out.
const DefaultLDAPCacheTTL = time.Minute

// LDAP checks the Basic credentials of users the htpasswd file does not
// list against an LDAP directory: bind as the service account, find the
// one entry whose user attribute is the user name (below BaseDN, as
// SearchScope says), bind as that entry with the password. The directory's groups
// are matched by access rules like `group` lines. A directory that is
// down, times out or refuses the service account answers 503, not 401.
type LDAP struct {
	// URL is the directory's address: ldap://host[:port] (389) or
	// ldaps://host[:port] (636), nothing else.
	URL string `json:"url"`

	// StartTLS upgrades an ldap:// connection to TLS before anything is
	// sent. Without it or ldaps://, passwords cross the network in clear
	// text (a warning is logged unless the host is a loopback address).
	StartTLS bool `json:"start_tls,omitempty"`

	// CAFile is a PEM file of the CA certificates that sign the
	// directory's certificate. Default: the system's roots.
	CAFile string `json:"ca_file,omitempty"`

	// InsecureSkipVerify accepts any certificate from the directory.
	// Anyone on the path can then read the passwords: for tests only.
	InsecureSkipVerify bool `json:"insecure_skip_verify,omitempty"`

	// BindDN is the service account that searches users and groups
	// (cn=registry,ou=services,dc=example,dc=org). Without it searches
	// are anonymous.
	BindDN string `json:"bind_dn,omitempty"`

	// BindPassword is the service account's password; placeholders such
	// as {env.LDAP_BIND_PASSWORD} are replaced. Prefer BindPasswordFile.
	BindPassword string `json:"bind_password,omitempty"`

	// BindPasswordFile is a file holding the service account's password
	// (surrounding white space is ignored).
	BindPasswordFile string `json:"bind_password_file,omitempty"`

	// BaseDN is where users are searched (its whole subtree, or one
	// level below it with SearchScope one).
	BaseDN string `json:"base_dn"`

	// SearchScope is how far below BaseDN users are searched: subtree
	// (the default: every OU under it) or one (only entries directly
	// below it, as zot searches without subtreeSearch).
	SearchScope string `json:"search_scope,omitempty"`

	// UserAttribute holds the user name (uid; sAMAccountName in Active
	// Directory). The name a user gets in policies is this attribute's
	// value as the directory spells it. Default: uid.
	UserAttribute string `json:"user_attribute,omitempty"`

	// UserFilter is ANDed to the user search, e.g.
	// (objectClass=inetOrgPerson), or
	// (memberOf=cn=registry,ou=groups,dc=example,dc=org) to let in only
	// one group's members.
	UserFilter string `json:"user_filter,omitempty"`

	// GroupsAttribute is the user entry's attribute that lists its groups
	// by DN, used unless GroupBaseDN is set. A group's name is the value
	// of its DN's first component (devs for
	// cn=devs,ou=groups,dc=example,dc=org). Default: memberOf.
	GroupsAttribute string `json:"groups_attribute,omitempty"`

	// GroupBaseDN makes groups come from a search under it (whole
	// subtree) instead of GroupsAttribute.
	GroupBaseDN string `json:"group_base_dn,omitempty"`

	// GroupFilter is the group search's filter; {dn} is replaced by the
	// user's DN and {user} by the user name, both escaped. Default:
	// (|(member={dn})(uniqueMember={dn})(memberUid={user})).
	GroupFilter string `json:"group_filter,omitempty"`

	// GroupNameAttribute names a group found by the group search.
	// Default: cn.
	GroupNameAttribute string `json:"group_name_attribute,omitempty"`

	// GroupNames is how a directory group is named in rules: rdn (the
	// default: the value of its DN's first component, devs for
	// cn=devs,ou=groups,dc=example,dc=org, or its group_name_attribute)
	// or dn (its whole DN as the directory spells it, as zot names
	// them: a cn=devs elsewhere in the tree is another group).
	GroupNames string `json:"group_names,omitempty"`

	// NoGroups reads no groups from the directory: a directory user's
	// groups are only those `groups` lists it in (zot without
	// userGroupAttribute). Excludes the group settings above.
	NoGroups bool `json:"no_groups,omitempty"`

	// DialTimeout bounds connecting to the directory, TLS included.
	// Default: 5s.
	DialTimeout caddy.Duration `json:"dial_timeout,omitempty"`

	// Timeout bounds each request to the directory (a login makes three
	// or four), and the wait for a free connection. Default: 5s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// MaxConnections bounds the connections open to the directory.
	// Default: 8.
	MaxConnections int `json:"max_connections,omitempty"`

	// CacheTTL is how long a successful login is remembered, so that the
	// many requests of one push do not each ask the directory. A changed
	// password, a disabled account or changed groups take effect after
	// at most this long for credentials used within it; failures are
	// never remembered. -1 (Caddyfile: off) turns it off. Default: 1m.
	CacheTTL caddy.Duration `json:"cache_ttl,omitempty"`
}

func (l *LDAP) validate() error {
	if l.URL == "" || l.BaseDN == "" {
		return errors.New("ldap needs url and base_dn")
	}
	if l.BindPassword != "" && l.BindPasswordFile != "" {
		return errors.New("ldap: bind_password and bind_password_file are exclusive")
	}
	if l.SearchScope != "" && l.SearchScope != "one" && l.SearchScope != "subtree" {
		return fmt.Errorf("ldap: search_scope %q: one or subtree", l.SearchScope)
	}
	if l.GroupNames != "" && l.GroupNames != "rdn" && l.GroupNames != "dn" {
		return fmt.Errorf("ldap: group_names %q: rdn or dn", l.GroupNames)
	}
	if l.DialTimeout < 0 || l.Timeout < 0 {
		return errors.New("ldap: dial_timeout and timeout must not be negative")
	}
	if l.MaxConnections < 0 {
		return errors.New("ldap: max_connections must not be negative")
	}
	if l.CacheTTL < -1 {
		return errors.New("ldap: cache_ttl must not be negative (-1 turns it off)")
	}
	tlsUsed := l.StartTLS || strings.HasPrefix(strings.ToLower(l.URL), "ldaps:")
	if (l.CAFile != "" || l.InsecureSkipVerify) && !tlsUsed {
		return errors.New("ldap: ca_file and insecure_skip_verify need ldaps:// or start_tls")
	}
	if l.CAFile != "" && l.InsecureSkipVerify {
		return errors.New("ldap: ca_file and insecure_skip_verify are exclusive")
	}
	// The rest is ldapauth's to check; the password is not read here.
	c := l.config()
	if l.BindPassword != "" || l.BindPasswordFile != "" {
		c.BindPassword = "read at provisioning" // a file, or an {env.*} unset here
	}
	if _, err := ldapauth.New(c); err != nil {
		return fmt.Errorf("ldap: %w", err)
	}
	return nil
}

// config is l as an ldapauth.Config, without the password and TLS roots.
func (l *LDAP) config() ldapauth.Config {
	c := ldapauth.Config{
		URL: l.URL, StartTLS: l.StartTLS,
		BindDN: l.BindDN, BindPassword: caddy.NewReplacer().ReplaceAll(l.BindPassword, ""),
		BaseDN: l.BaseDN, OneLevel: l.SearchScope == "one", UserAttribute: l.UserAttribute, UserFilter: l.UserFilter,
		GroupsAttribute: l.GroupsAttribute, GroupBaseDN: l.GroupBaseDN, GroupFilter: l.GroupFilter,
		GroupNameAttribute: l.GroupNameAttribute, GroupsByDN: l.GroupNames == "dn", NoGroups: l.NoGroups,
		DialTimeout: time.Duration(l.DialTimeout), Timeout: time.Duration(l.Timeout),
		MaxConnections: l.MaxConnections,
		CacheTTL:       time.Duration(l.CacheTTL),
	}
	switch {
	case l.CacheTTL == 0:
		c.CacheTTL = DefaultLDAPCacheTTL
	case l.CacheTTL < 0:
		c.CacheTTL = 0
	}
	return c
}

// provision reads the password and CA files and builds the Directory.
// Nothing is contacted: a directory that is down does not stop Caddy.
func (l *LDAP) provision(logger *zap.Logger) (*ldapauth.Directory, error) {
	c := l.config()
	c.Logger = logger.Named("ldap")
	if l.BindPasswordFile != "" {
		b, err := configfile.Read(l.BindPasswordFile)
		if err != nil {
			return nil, fmt.Errorf("ldap bind_password_file: %w", err)
		}
		c.BindPassword = strings.TrimSpace(string(b))
		if c.BindPassword == "" {
			return nil, fmt.Errorf("ldap bind_password_file %s is empty", l.BindPasswordFile)
		}
	}
	if l.BindDN != "" && c.BindPassword == "" {
		// An empty password would make the service bind an
		// unauthenticated one; a placeholder that came out empty too.
		return nil, errors.New("ldap: bind_dn needs bind_password or bind_password_file (an empty one is refused)")
	}
	if l.CAFile != "" || l.InsecureSkipVerify {
		c.TLS = &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: l.InsecureSkipVerify}
		if l.CAFile != "" {
			pem, err := configfile.Read(l.CAFile)
			if err != nil {
				return nil, fmt.Errorf("ldap ca_file: %w", err)
			}
			c.TLS.RootCAs = x509.NewCertPool()
			if !c.TLS.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("ldap ca_file %s: no PEM certificate in it", l.CAFile)
			}
		}
	}
	d, err := ldapauth.New(c)
	if err != nil {
		return nil, fmt.Errorf("ldap: %w", err)
	}
	if u, _ := url.Parse(l.URL); u != nil && u.Scheme == "ldap" && !l.StartTLS && !isLoopback(u.Hostname()) {
		logger.Warn("ldap: passwords go to the directory in clear text; use ldaps:// or start_tls", zap.String("url", l.URL))
	}
	if l.InsecureSkipVerify {
		logger.Warn("ldap: insecure_skip_verify: the directory's certificate is not checked, so passwords may go to anyone on the path", zap.String("url", l.URL))
	}
	return d, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// unmarshalLDAP parses
//
//	ldap {
//		url                  ldap[s]://<host>[:<port>]
//		start_tls
//		ca_file              <file>
//		insecure_skip_verify
//		bind_dn              <dn>
//		bind_password        <password>
//		bind_password_file   <file>
//		base_dn              <dn>
//		search_scope         one|subtree
//		user_attribute       <attribute>
//		user_filter          <filter>
//		groups_attribute     <attribute>
//		group_base_dn        <dn>
//		group_filter         <filter>
//		group_name_attribute <attribute>
//		group_names          rdn|dn
//		no_groups
//		dial_timeout         <duration>
//		timeout              <duration>
//		max_connections      <n>
//		cache_ttl            <duration>|off
//	}
func unmarshalLDAP(d *caddyfile.Dispenser) (*LDAP, error) {
	l := &LDAP{}
	err := eachSubdirective(d, func(sub string, args []string) error {
		switch sub {
		case "start_tls", "insecure_skip_verify", "no_groups":
			if len(args) != 0 {
				return d.Errf("%s takes no argument", sub)
			}
			switch sub {
			case "start_tls":
				l.StartTLS = true
			case "insecure_skip_verify":
				l.InsecureSkipVerify = true
			default:
				l.NoGroups = true
			}
			return nil
		}
		v, err := oneArg(d, sub, args)
		if err != nil {
			return err
		}
		switch sub {
		case "url":
			l.URL = v
		case "ca_file":
			l.CAFile = v
		case "bind_dn":
			l.BindDN = v
		case "bind_password":
			l.BindPassword = v
		case "bind_password_file":
			l.BindPasswordFile = v
		case "base_dn":
			l.BaseDN = v
		case "search_scope":
			l.SearchScope = v
		case "user_attribute":
			l.UserAttribute = v
		case "user_filter":
			l.UserFilter = v
		case "groups_attribute":
			l.GroupsAttribute = v
		case "group_base_dn":
			l.GroupBaseDN = v
		case "group_filter":
			l.GroupFilter = v
		case "group_name_attribute":
			l.GroupNameAttribute = v
		case "group_names":
			l.GroupNames = v
		case "dial_timeout":
			l.DialTimeout, err = durationArg(d, sub, v)
		case "timeout":
			l.Timeout, err = durationArg(d, sub, v)
		case "cache_ttl":
			if v == "off" {
				l.CacheTTL = -1
				return nil
			}
			l.CacheTTL, err = durationArg(d, sub, v)
		case "max_connections":
			n, convErr := strconv.Atoi(v)
			if convErr != nil || n < 1 {
				return d.Errf("max_connections %q: not a positive number", v)
			}
			l.MaxConnections = n
		default:
			return d.Errf("unrecognized ldap subdirective %q (known: url, start_tls, ca_file, insecure_skip_verify, bind_dn, bind_password, bind_password_file, base_dn, search_scope, user_attribute, user_filter, groups_attribute, group_base_dn, group_filter, group_name_attribute, group_names, no_groups, dial_timeout, timeout, max_connections, cache_ttl)", sub)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return l, nil
}
