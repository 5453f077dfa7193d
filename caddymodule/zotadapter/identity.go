package zotadapter

// http.auth.ldap and client certificates (http.tls.cacert with
// http.auth.mtls): the identity sources zot and oci_registry share.
//
// Where zot's LDAP client and oci_registry's differ:
//   - zot dials ldaps:// unless `insecure` is true, whatever `startTLS`
//     says; StartTLS only upgrades an insecure connection. The URL made
//     here follows that, so a config that worked with zot connects the
//     same way;
//   - zot tries the directory after a wrong htpasswd password; here a
//     user the htpasswd file lists is checked against it only.

import (
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/caddy-oci/caddy-oci/caddymodule"
	"github.com/caddy-oci/caddy-oci/internal/configfile"
)

// ldap maps http.auth.ldap onto auth.ldap.
func (a *adapter) ldap(o *object, au *caddymodule.Auth) error {
	l, err := o.sub("ldap")
	if err != nil || l == nil {
		return err
	}
	defer l.rest()
	host, err := l.str("address")
	if err != nil {
		return err
	}
	baseDN, err := l.str("baseDN")
	if err != nil {
		return err
	}
	userAttr, err := l.str("userAttribute")
	if err != nil {
		return err
	}
	// zot refuses to start without these three.
	if host == "" || baseDN == "" || userAttr == "" {
		return fmt.Errorf("%s: needs address, baseDN and userAttribute", l.path)
	}
	insecure, err := l.boolean("insecure", false)
	if err != nil {
		return err
	}
	startTLS, err := l.boolean("startTLS", false)
	if err != nil {
		return err
	}
	skipVerify, err := l.boolean("skipVerify", false)
	if err != nil {
		return err
	}
	subtree, err := l.boolean("subtreeSearch", false)
	if err != nil {
		return err
	}
	caCert, err := l.str("caCert")
	if err != nil {
		return err
	}
	// zot decodes a string of digits into the port too.
	var port int64
	v, hasPort := l.get("port")
	if hasPort {
		n, isNum := v.(json.Number)
		str, isStr := v.(string)
		switch {
		case isNum:
			port, err = n.Int64()
		case isStr:
			port, err = strconv.ParseInt(str, 10, 64)
		default:
			err = fmt.Errorf("not a number")
		}
		if err != nil {
			return fmt.Errorf("%s: must be a port number, not %s", l.at("port"), kind(v))
		}
	}
	if hasPort && (port < 1 || port > 65535) {
		return fmt.Errorf("%s: %d is not a port number", l.at("port"), port)
	}

	cfg := &caddymodule.LDAP{BaseDN: baseDN, UserAttribute: userAttr}
	scheme, defPort := "ldaps", int64(636)
	switch {
	case insecure && startTLS:
		scheme, defPort, cfg.StartTLS = "ldap", 389, true
	case insecure:
		scheme, defPort = "ldap", 389
	case startTLS:
		a.warn(l.at("startTLS"), "zot connects with TLS from the start (ldaps://) unless insecure is true, and so does this config; StartTLS applies only to an insecure connection")
	}
	if !hasPort {
		port = defPort
	}
	cfg.URL = scheme + "://" + net.JoinHostPort(host, strconv.FormatInt(port, 10))
	tlsUsed := scheme == "ldaps" || cfg.StartTLS
	switch {
	case !tlsUsed && (skipVerify || caCert != ""):
		a.warn(l.path, "skipVerify and caCert have no effect without TLS (insecure without startTLS), as in zot")
	case skipVerify:
		cfg.InsecureSkipVerify = true
		if caCert != "" {
			a.warn(l.at("caCert"), "not used: skipVerify accepts any certificate")
		}
	default:
		cfg.CAFile = caCert
	}
	if !subtree {
		// As zot: only users directly below baseDN sign in, not those
		// of the OUs under it (disabled accounts, contractors).
		cfg.SearchScope = "one"
	}
	if cfg.UserFilter, err = l.str("userFilter"); err != nil {
		return err
	}
	if cfg.UserFilter != "" && !strings.HasPrefix(cfg.UserFilter, "(") {
		cfg.UserFilter = "(" + cfg.UserFilter + ")"
	}
	if cfg.GroupsAttribute, err = l.str("userGroupAttribute"); err != nil {
		return err
	}
	a.ldapGroups = cfg.GroupsAttribute != ""
	if a.ldapGroups {
		// zot's groups are the raw values of userGroupAttribute
		// (memberOf: whole DNs), and policies name them so. Named by
		// their first component, a cn=devs anywhere in the tree (an OU
		// whose groups anyone may create) would be cn=devs,ou=groups,
		// and a directory group named like an accessControl group would
		// get its rules.
		cfg.GroupNames = "dn"
	} else {
		// Without userGroupAttribute zot takes no groups from the
		// directory; ldap's default would read memberOf, and a group
		// accessControl.groups defines under a DN would get members
		// that zot never lets in.
		cfg.NoGroups = true
	}
	if err := a.ldapBind(l, cfg); err != nil {
		return err
	}
	if au.Htpasswd != "" {
		a.warn(l.path, "a user the htpasswd file lists is checked against that file only here; zot also tries the directory when the htpasswd password is wrong")
	}
	au.LDAP = cfg
	a.ldapOn = true
	return nil
}

// ldapBind sets the service account: zot's credentialsFile (JSON with
// bindDN and bindPassword), or the bindDN and bindPassword keys older zot
// versions read from the config itself. zot without either binds
// anonymously, as oci_registry does without bind_dn.
func (a *adapter) ldapBind(l *object, cfg *caddymodule.LDAP) error {
	var err error
	if cfg.BindDN, err = l.str("bindDN"); err != nil {
		return err
	}
	if cfg.BindPassword, err = l.str("bindPassword"); err != nil {
		return err
	}
	file, err := l.str("credentialsFile")
	if err != nil {
		return err
	}
	if file != "" {
		data, err := configfile.Read(file)
		if err != nil {
			return fmt.Errorf("%s: %w", l.at("credentialsFile"), err)
		}
		var creds map[string]any
		if err := json.Unmarshal(data, &creds); err != nil {
			return fmt.Errorf("%s: %s is not JSON with bindDN and bindPassword", l.at("credentialsFile"), file)
		}
		for k, v := range creds {
			s, _ := v.(string)
			switch strings.ToLower(k) {
			case "binddn":
				cfg.BindDN = s
			case "bindpassword":
				cfg.BindPassword = s
			}
		}
	}
	if cfg.BindPassword != "" {
		where := l.at("bindPassword")
		if file != "" {
			where = l.at("credentialsFile")
		}
		a.warn(where, "the bind password is copied into the adapted config: keep its output private, or set auth.ldap.bind_password to {env.LDAP_BIND_PASSWORD} (or bind_password_file) in it")
	}
	return nil
}

// Identity attributes of zot's mtls, as client_certificates' user.
var certUser = map[string]string{
	"commonname": "cn", "cn": "cn",
	"email": "email", "rfc822name": "email",
	"dnsname": "dns", "dns": "dns",
	"uri": "uri", "url": "uri",
}

// mtls reads http.auth.mtls: which certificate attribute names the
// user (zot's default: the common name). The identity source itself is
// made in finishAuth, once it is known whether anything signs in.
func (a *adapter) mtls(o *object) error {
	m, err := o.sub("mtls")
	if err != nil || m == nil {
		return err
	}
	defer m.rest()
	if a.clientCA == "" {
		a.warn(m.path, "has no effect without http.tls.cacert, as in zot")
		m.ignore("identityAttributes", "uriSanPattern", "uriSanIndex", "dnsSanIndex", "emailSanIndex")
		return nil
	}
	attrs, err := m.strings("identityAttributes")
	if err != nil {
		return err
	}
	if len(attrs) == 0 {
		attrs = []string{"CommonName"}
	}
	first := strings.ToLower(strings.TrimSpace(attrs[0]))
	user, ok := certUser[first]
	switch {
	case first == "subject" || first == "dn":
		a.certUser = ""
		a.warn(m.at("identityAttributes"), "the whole subject cannot name a user here (cn, email, dns or uri can); client certificates sign nobody in")
	case !ok:
		return fmt.Errorf("%s: unknown identity attribute %q (zot's: CommonName, Subject, Email, URI, DNSName)", m.at("identityAttributes"), attrs[0])
	default:
		a.certUser = user
		if len(attrs) > 1 {
			a.warn(m.at("identityAttributes"), fmt.Sprintf("only the first attribute (%s) names the user here; a certificate without it is refused rather than tried with the next", attrs[0]))
		}
		if user == "dns" || user == "email" || user == "uri" {
			a.warn(m.at("identityAttributes"), "a certificate with several names of that kind is refused here; zot takes the first (or the one its *SanIndex says)")
		}
	}
	m.unsupported("uriSanPattern", "not supported: the user is the whole URI, so policies naming what the pattern extracted match nobody")
	for _, k := range []string{"uriSanIndex", "dnsSanIndex", "emailSanIndex"} {
		if n, _, err := m.integer(k); err != nil {
			return err
		} else if n != 0 {
			a.warn(m.at(k), "not supported: a certificate must carry exactly one name of that kind")
		}
	}
	return nil
}
