package zotadapter

// http.auth and http.accessControl: who signs in, and who may do what.
//
// zot and oci_registry agree on most of it: the same four actions (read,
// create = push new tags and blobs, update = move an existing tag,
// delete), glob patterns of which only the longest matching one counts,
// an admin policy that applies everywhere. They differ in a few places,
// each a warning when a config relies on it:
//   - zot's anonymousPolicy is for callers without credentials only;
//     oci_registry's `anonymous` actions go to signed-in users too;
//   - zot's adminPolicy without actions grants nothing; oci_registry's
//     admin without actions grants all four, so it is left out;
//   - zot policies may carry CEL conditions; they are not evaluated here,
//     so such a policy is left out (it grants less, never more);
//   - a group no config line defines comes in zot from LDAP or OpenID; with
//     no such source here it is dropped, as it could match nobody.

import (
	"encoding/json"
	"fmt"
	"net/url"
	"path"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/caddymodule"
	"github.com/caddy-oci/caddy-oci/internal/configfile"
)

var allActions = []string{"read", "create", "update", "delete"}

// auth maps http.auth, http.realm and http.accessControl into
// Registry.Auth.
func (a *adapter) auth(httpObj *object, realm string) error {
	au := &caddymodule.Auth{Realm: realm}
	a.reg.Auth = au
	o, err := httpObj.sub("auth")
	if err != nil {
		return err
	}
	if o != nil {
		if err := a.authn(o, au); err != nil {
			return err
		}
		o.rest()
	}
	ac, err := httpObj.sub("accessControl")
	if err != nil {
		return err
	}
	if ac != nil {
		a.hasAccessControl = true
		if err := a.accessControl(ac, au); err != nil {
			return err
		}
		ac.rest()
	}
	return nil
}

func (a *adapter) authn(o *object, au *caddymodule.Auth) error {
	delay, ok, err := o.integer("failDelay")
	if err != nil {
		return err
	}
	if ok {
		if delay < 0 {
			return fmt.Errorf("http.auth.failDelay: must not be negative")
		}
		// zot counts whole seconds, and 0 is no delay at all.
		au.FailDelay = caddy.Duration(time.Duration(delay) * time.Second)
		if delay == 0 {
			a.warn("http.auth.failDelay", "0 means no delay in zot; a failed login still waits the default 1s here")
		}
	}
	hp, err := o.sub("htpasswd")
	if err != nil {
		return err
	}
	if hp != nil {
		if au.Htpasswd, err = hp.str("path"); err != nil {
			return err
		}
		hp.rest()
	}
	if err := a.ldap(o, au); err != nil {
		return err
	}
	if err := a.mtls(o); err != nil {
		return err
	}
	o.unsupported("sessionKeysFile", "not used: the sign-in session key is generated and kept in the storage folder")
	o.unsupported("sessionDriver", "not used: sign-in sessions are kept in the registry's metadata store")
	o.unsupported("secureSession", "not used: session cookies are Secure whenever externalUrl is https")
	if err := a.bearer(o, au); err != nil {
		return err
	}
	if err := a.openID(o, au); err != nil {
		return err
	}
	apikey, err := o.boolean("apikey", false)
	if err != nil {
		return err
	}
	a.apiKeys = a.apiKeys || apikey
	return nil
}

// bearer maps Docker token auth, and OIDC workload identity.
func (a *adapter) bearer(o *object, au *caddymodule.Auth) error {
	b, err := o.sub("bearer")
	if err != nil || b == nil {
		return err
	}
	defer b.rest()
	realm, err := b.str("realm")
	if err != nil {
		return err
	}
	service, err := b.str("service")
	if err != nil {
		return err
	}
	cert, err := b.str("cert")
	if err != nil {
		return err
	}
	if realm != "" || service != "" || cert != "" {
		au.Token = &caddymodule.TokenAuth{Realm: realm, Service: service}
		if cert != "" {
			au.Token.TrustedCerts = []string{cert}
		}
		a.warn("http.auth.bearer", "tokens must name their issuer (iss) here, which zot does not check: set auth.token.issuer in the adapted JSON to your token service's issuer, or the config will not load")
	}
	b.unsupported("upstreamTokenEndpoint", "not mapped; oci_registry's token proxy (auth.token.proxy) forwards to the realm itself")
	b.unsupported("awsSecretsManager", "not supported: name the token signing keys as PEM files (cert)")
	wls, err := b.list("oidc")
	if err != nil {
		return err
	}
	for i, w := range wls {
		if i > 0 {
			a.warn(w.path, "only one workload identity issuer is supported; this one is left out")
			w.ignore("issuer", "audiences", "claimMapping", "certificateAuthority", "certificateAuthorityFile", "skipIssuerVerification")
			w.rest()
			continue
		}
		issuer, err := w.str("issuer")
		if err != nil {
			return err
		}
		auds, err := w.strings("audiences")
		if err != nil {
			return err
		}
		if issuer == "" || len(auds) == 0 {
			return fmt.Errorf("%s: needs issuer and audiences", w.path)
		}
		au.Workload = &caddymodule.Workload{Issuer: issuer, Audience: auds[0]}
		if len(auds) > 1 {
			a.warn(w.at("audiences"), fmt.Sprintf("only one audience is accepted here: %q", auds[0]))
		}
		w.unsupported("claimMapping", "CEL claim mappings are not supported: the user is workload:<sub> and groups come from the groups claim")
		w.unsupported("certificateAuthority", "not supported: the issuer's TLS certificate must verify against the system roots")
		w.unsupported("certificateAuthorityFile", "not supported: the issuer's TLS certificate must verify against the system roots")
		w.unsupported("skipIssuerVerification", "the issuer is always verified here")
		w.rest()
	}
	return nil
}

// openID maps the first OpenID Connect provider onto auth.oidc, the
// browser sign-in at /_oci/auth/.
func (a *adapter) openID(o *object, au *caddymodule.Auth) error {
	op, err := o.sub("openid")
	if err != nil || op == nil {
		return err
	}
	defer op.rest()
	op.unsupported("callbackAllowOrigins", "not used: sign-in always returns to /_oci/auth/ of this server")
	names, raw, err := op.entries("providers")
	if err != nil {
		return err
	}
	for _, name := range names {
		p, err := a.object(op.at("providers")+"."+name, raw[name])
		if err != nil {
			return err
		}
		if err := a.provider(name, p, au); err != nil {
			return err
		}
		p.rest()
	}
	return nil
}

// Issuers of the providers zot names by kind.
var knownIssuers = map[string]string{"google": "https://accounts.google.com", "gitlab": "https://gitlab.com"}

func (a *adapter) provider(name string, p *object, au *caddymodule.Auth) error {
	keys := []string{"credentialsFile", "name", "clientid", "clientsecret", "keypath", "issuer", "authurl", "tokenurl", "scopes", "claimMapping"}
	switch {
	case name == "github":
		a.warn(p.path, "GitHub sign-in is OAuth2, not OpenID Connect, and is not supported")
		p.ignore(keys...)
		return nil
	case name != "oidc" && knownIssuers[name] == "":
		a.warn(p.path, "not a provider zot knows (oidc, google, gitlab, github); left out")
		p.ignore(keys...)
		return nil
	case au.OIDC != nil:
		a.warn(p.path, "only one OpenID provider is supported here; this one is left out")
		p.ignore(keys...)
		return nil
	}
	oidc := &caddymodule.OIDC{UsernameClaim: "email"} // zot's default username claim
	var err error
	if oidc.Issuer, err = p.str("issuer"); err != nil {
		return err
	}
	if oidc.Issuer == "" {
		oidc.Issuer = knownIssuers[name]
	}
	if oidc.Issuer == "" {
		return fmt.Errorf("%s: needs an issuer", p.at("issuer"))
	}
	if oidc.ClientID, err = p.str("clientid"); err != nil {
		return err
	}
	if oidc.ClientSecret, err = p.str("clientsecret"); err != nil {
		return err
	}
	cf, err := p.str("credentialsFile")
	if err != nil {
		return err
	}
	if cf != "" {
		if err := a.oidcCredentials(p.at("credentialsFile"), cf, oidc); err != nil {
			return err
		}
	}
	if oidc.ClientID == "" {
		return fmt.Errorf("%s: needs clientid, or a credentialsFile with one", p.path)
	}
	scopes, err := p.strings("scopes")
	if err != nil {
		return err
	}
	for _, s := range scopes {
		if s != "openid" { // always asked for here
			oidc.Scopes = append(oidc.Scopes, s)
		}
	}
	if cm, err := p.sub("claimMapping"); err != nil {
		return err
	} else if cm != nil {
		if u, err := cm.str("username"); err != nil {
			return err
		} else if u != "" {
			oidc.UsernameClaim = u
		}
		if oidc.GroupsClaim, err = cm.str("groups"); err != nil {
			return err
		}
		cm.rest()
	}
	p.ignore("name") // the sign-in button's label
	p.unsupported("keypath", "not used")
	p.unsupported("authurl", "not used: endpoints come from the issuer's discovery document")
	p.unsupported("tokenurl", "not used: endpoints come from the issuer's discovery document")
	oidc.ExternalURL = a.externalURL
	if oidc.ExternalURL == "" {
		scheme := "http"
		if a.tlsApp != nil {
			scheme = "https"
		}
		oidc.ExternalURL = scheme + "://" + a.server.Listen[0]
		a.warn("http.externalUrl", "not set; OpenID sign-in needs it: "+oidc.ExternalURL+" is assumed")
	} else if u, err := url.Parse(oidc.ExternalURL); err == nil && u.Path != "" && u.Path != "/" {
		a.warn("http.externalUrl", "only scheme and host are used here; the path "+u.Path+" is dropped")
		u.Path = ""
		oidc.ExternalURL = u.String()
	}
	a.warn(p.path, "signs users in at /_oci/auth/ (callback /_oci/auth/callback: register it at the provider), where they make API keys; zot's /zot/auth/ paths and UI are not served")
	au.OIDC = oidc
	return nil
}

// oidcCredentials reads zot's OpenID credentials file
// ({"clientid": ..., "clientsecret": ...}) now, since oci_registry takes
// the client ID in its config.
func (a *adapter) oidcCredentials(key, file string, oidc *caddymodule.OIDC) error {
	data, err := configfile.Read(file)
	if err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	var creds map[string]any
	if err := json.Unmarshal(data, &creds); err != nil {
		return fmt.Errorf("%s: %s: %w", key, file, err)
	}
	for k, v := range creds {
		s, _ := v.(string)
		switch strings.ToLower(k) {
		case "clientid":
			oidc.ClientID = s
		case "clientsecret":
			oidc.ClientSecret = s
		}
	}
	if oidc.ClientSecret != "" {
		a.warn(key, "the client secret is copied into the adapted config: keep its output as private as "+file)
	}
	return nil
}

// accessControl maps repositories, groups, adminPolicy; metrics is kept
// for extensions.metrics.
func (a *adapter) accessControl(o *object, au *caddymodule.Auth) error {
	gnames, graw, err := o.entries("groups")
	if err != nil {
		return err
	}
	for _, g := range gnames {
		gobj, err := a.object(o.at("groups")+"."+g, graw[g])
		if err != nil {
			return err
		}
		users, err := gobj.strings("users")
		if err != nil {
			return err
		}
		if au.Groups == nil {
			au.Groups = map[string][]string{}
		}
		au.Groups[g] = users
		gobj.rest()
	}

	pats, praw, err := o.entries("repositories")
	if err != nil {
		return err
	}
	au.Repositories = map[string]authscope.RepositoryPolicy{}
	for _, pat := range pats {
		po, err := a.object(o.at("repositories")+"."+pat, praw[pat])
		if err != nil {
			return err
		}
		rp, err := a.repositoryPolicy(po)
		if err != nil {
			return err
		}
		if err := authscope.CheckPattern(pat); err != nil {
			return fmt.Errorf("%s: %w", po.path, err)
		}
		if why := globQuirk(pat); why != "" {
			a.warn(po.path, fmt.Sprintf("zot's glob matching differs here (%s); spell the pattern out, e.g. with a separate pattern for the shorter name", why))
		}
		au.Repositories[pat] = rp
		po.rest()
	}

	if ap, err := o.sub("adminPolicy"); err != nil {
		return err
	} else if ap != nil {
		g, err := a.grant(ap)
		if err != nil {
			return err
		}
		switch {
		case len(g.Users)+len(g.Groups) == 0:
		case len(g.Actions) == 0:
			a.warn(ap.path, "grants no actions in zot; left out (an admin without actions may do everything here)")
		default:
			au.Admin = &authscope.AdminPolicy{Users: g.Users, Groups: g.Groups, Actions: g.Actions}
		}
		ap.rest()
	}

	if m, err := o.sub("metrics"); err != nil {
		return err
	} else if m != nil {
		a.hasMetricsAC = true
		if a.metricsUsers, err = m.strings("users"); err != nil {
			return err
		}
		anon, err := m.strings("anonymousPolicy")
		if err != nil {
			return err
		}
		a.metricsAnon = slices.Contains(anon, "read")
		m.rest()
	}
	return nil
}

func (a *adapter) repositoryPolicy(po *object) (authscope.RepositoryPolicy, error) {
	var rp authscope.RepositoryPolicy
	ps, err := po.list("policies")
	if err != nil {
		return rp, err
	}
	for _, p := range ps {
		g, err := a.grant(p)
		if err != nil {
			return rp, err
		}
		if p.has("conditions") {
			p.get("conditions")
			a.warn(p.at("conditions"), "CEL conditions are not evaluated here; this policy is left out, so it grants nothing")
			p.rest()
			continue
		}
		p.rest()
		if len(g.Actions) > 0 && len(g.Users)+len(g.Groups) > 0 {
			rp.Policies = append(rp.Policies, g)
		}
	}
	if rp.Default, err = a.actions(po, "defaultPolicy"); err != nil {
		return rp, err
	}
	if rp.Anonymous, err = a.actions(po, "anonymousPolicy"); err != nil {
		return rp, err
	}
	var extra []string
	for _, act := range rp.Anonymous {
		if !slices.Contains(rp.Default, act) {
			extra = append(extra, act)
		}
	}
	if len(extra) > 0 && (a.signsIn() || a.clientCA != "" && a.certUser != "") {
		a.warn(po.at("anonymousPolicy"), "signed-in users get these actions too here ("+strings.Join(extra, ", ")+"), not only callers without credentials as in zot")
	}
	return rp, nil
}

func (a *adapter) grant(p *object) (authscope.Grant, error) {
	var g authscope.Grant
	var err error
	if g.Users, err = p.strings("users"); err != nil {
		return g, err
	}
	if g.Groups, err = p.strings("groups"); err != nil {
		return g, err
	}
	g.Actions, err = a.actions(p, "actions")
	return g, err
}

// actions reads a list of zot actions, which are oci_registry's.
func (a *adapter) actions(o *object, key string) ([]string, error) {
	acts, err := o.strings(key)
	if err != nil {
		return nil, err
	}
	for _, act := range acts {
		if !slices.Contains(allActions, act) {
			return nil, fmt.Errorf("%s: unknown action %q (zot's actions: read, create, update, delete)", o.at(key), act)
		}
	}
	return acts, nil
}

// signsIn reports whether anything but a client certificate signs
// clients in.
func (a *adapter) signsIn() bool {
	au := a.reg.Auth
	return au != nil && (au.Htpasswd != "" || au.Token != nil || au.OIDC != nil || au.Workload != nil || au.LDAP != nil)
}

// finishAuth completes Auth once everything is read: API keys need the
// OpenID sign-in; client certificates sign users in when there is auth
// at all (without it, zot lets every verified certificate do
// everything, as require_and_verify with no auth does here); without
// accessControl every signed-in user may do everything (zot's rule);
// groups nobody defines are dropped when no identity provider could
// bring them.
func (a *adapter) finishAuth() error {
	au := a.reg.Auth
	if a.apiKeys {
		if au.OIDC != nil {
			au.APIKeys = &caddymodule.APIKeysConfig{}
		} else {
			a.warn("http.auth.apikey", "API keys are made after an OpenID sign-in here; without an OpenID provider there are none")
		}
	}
	if !a.signsIn() && !a.hasAccessControl {
		a.reg.Auth = nil // zot without auth: everyone may do everything
		if au.Realm != "" {
			a.warn("http.realm", "no authentication is configured; the realm is not used")
		}
		return nil
	}
	if a.clientCA != "" && a.certUser != "" {
		au.ClientCertificates = &caddymodule.ClientCertificates{User: a.certUser}
	}
	if !a.hasAccessControl {
		au.Repositories = map[string]authscope.RepositoryPolicy{"**": {Default: allActions}}
		return nil
	}
	if au.OIDC != nil || au.Workload != nil || a.ldapGroups {
		return nil // groups may come from the identity provider
	}
	undefined := func(where string, gs []string) []string {
		var keep []string
		for _, g := range gs {
			if _, ok := au.Groups[g]; ok {
				keep = append(keep, g)
			} else {
				a.warn(where, fmt.Sprintf("group %q is not defined in accessControl.groups and no identity provider here brings groups; dropped", g))
			}
		}
		return keep
	}
	pats := make([]string, 0, len(au.Repositories))
	for p := range au.Repositories {
		pats = append(pats, p)
	}
	sort.Strings(pats)
	for _, p := range pats {
		rp := au.Repositories[p]
		var kept []authscope.Grant
		for _, g := range rp.Policies {
			g.Groups = undefined("http.accessControl.repositories."+p+".policies", g.Groups)
			if len(g.Users)+len(g.Groups) > 0 {
				kept = append(kept, g)
			}
		}
		rp.Policies = kept
		au.Repositories[p] = rp
	}
	if au.Admin != nil {
		au.Admin.Groups = undefined("http.accessControl.adminPolicy", au.Admin.Groups)
		if len(au.Admin.Users)+len(au.Admin.Groups) == 0 {
			au.Admin = nil
		}
	}
	if len(au.Repositories) == 0 {
		// zot's accessControl without repositories lets nobody but
		// admins do anything; oci_registry needs a rule to say so.
		au.Repositories = map[string]authscope.RepositoryPolicy{"**": {}}
	}
	return nil
}

// mirrorPatterns makes the access rules judge mirrored repositories by
// the names zot gives them. zot names a repository its sync fetches
// without a prefix (content "**") as upstream does (acme/internal/tool);
// here it belongs to the default mirror D as D/acme/internal/tool, which
// a pattern such as */internal/** does not match, so a shorter pattern
// (**) decided and granted more. Each pattern P therefore also stands
// as D/P, with P's policy: D/P matches D/x exactly when P matches x, and
// is longer than P by the same amount for every pattern, so the longest
// match is zot's. What stays inexact is a warning naming the pattern:
//   - P as written matches some D/x too, for another x than zot's
//     (*/internal/** matches D/internal/y): for D/x it competes with the
//     D/... patterns, and the longer one counts;
//   - under a library prefix (Docker Hub: alpine is library/alpine
//     here), a one-component name is judged as library/<name>.
func (a *adapter) mirrorPatterns() {
	au := a.reg.Auth
	if au == nil || len(au.Repositories) == 0 {
		return
	}
	pats := make([]string, 0, len(au.Repositories))
	for p := range au.Repositories {
		pats = append(pats, p)
	}
	sort.Strings(pats)
	for _, m := range a.reg.Mirrors {
		if m.Default {
			for _, p := range pats {
				dp := m.Prefix + "/" + p
				if _, ok := au.Repositories[dp]; !ok {
					au.Repositories[dp] = au.Repositories[p]
				}
				if matchesUnder(p, m.Prefix) {
					a.warn("http.accessControl.repositories."+p, fmt.Sprintf("as written it also matches names of the default mirror (%s/...) that zot's %s does not; there it competes with the rules made for those names (%s/<pattern>), and the longer pattern counts", m.Prefix, p, m.Prefix))
				}
			}
		}
		if m.LibraryPrefix == "" {
			continue
		}
		var base []string // what zot's names of this mirror start with
		if !m.Default {
			base = []string{m.Prefix}
		}
		for _, p := range pats {
			if tellsLibraryApart(p, base, m.LibraryPrefix) {
				a.warn("http.accessControl.repositories."+p, fmt.Sprintf("zot's %s and %s are one repository of the mirror %s here (%s): this pattern matches one of them only, and that name's rule applies to both", strings.Join(append(slices.Clone(base), "alpine"), "/"), strings.Join(append(slices.Clone(base), m.LibraryPrefix, "alpine"), "/"), m.Prefix, strings.Join(append([]string{m.Prefix}, m.LibraryPrefix, "alpine"), "/")))
			}
		}
	}
}

// tellsLibraryApart reports whether an alternative of pat, below base
// (components it must match), matches a one-component name x or
// lib/x without the other: a mirror with a library prefix stores both
// as lib/x.
func tellsLibraryApart(pat string, base []string, lib string) bool {
	alts, err := authscope.ExpandPattern(pat)
	if err != nil {
		return false
	}
next:
	for _, alt := range alts {
		comps := strings.Split(alt, "/")
		if len(comps) <= len(base) {
			continue
		}
		for i, b := range base {
			if ok, _ := path.Match(comps[i], b); !ok || comps[i] == "**" {
				continue next
			}
		}
		r := comps[len(base):]
		switch {
		case len(r) == 1 && r[0] != "**":
			return true
		case len(r) == 2 && r[0] != "**" && r[1] != "**":
			if ok, _ := path.Match(r[0], lib); ok {
				return true
			}
		}
	}
	return false
}

// matchesUnder reports whether an alternative of pattern pat has a
// first component other than ** that matches prefix (** alone matches
// the same names under any prefix).
func matchesUnder(pat, prefix string) bool {
	alts, err := authscope.ExpandPattern(pat)
	if err != nil {
		return false
	}
	for _, alt := range alts {
		first, _, more := strings.Cut(alt, "/")
		if first == "**" || !more {
			continue
		}
		if ok, _ := path.Match(first, prefix); ok {
			return true
		}
	}
	return false
}

// globQuirk says where zot's glob matcher (doublestar) and the
// registry's part ways on pat, or "". Both agree on `*`, `**`, `?`,
// classes and alternatives, except where doublestar's end of a name
// meets the rest of the pattern: it ends a match only when what is left
// of the pattern is exactly `/**` (or `*`, `**`, ...), so `app*/**` does
// not match app there (its `*` was never reached) while it does here,
// nor does `a/**/**` match a; and a `**` made of two stars from
// different {} alternatives, or one inside them, is not read as here.
// A repository one side matches and the other does not may then fall
// to another rule that grants more.
func globQuirk(pat string) string {
	alts, err := authscope.ExpandPattern(pat)
	if err != nil {
		return ""
	}
	if strings.Contains(pat, "*{") {
		// At the end of a name doublestar reads alternatives only
		// where they start what is left: a*{,b} does not match a.
		return "a * right before {...}"
	}
	outside := strings.Count(stripAlternatives(pat), "**")
	for _, alt := range alts {
		comps := strings.Split(alt, "/")
		stars := 0
		for _, c := range comps {
			if c == "**" {
				stars++
			}
		}
		if stars > 0 && strings.Contains(pat, "{") && stars > outside {
			return "a ** made from {} alternatives"
		}
		k := 0 // trailing ** components
		for k < len(comps) && comps[len(comps)-1-k] == "**" {
			k++
		}
		if k == 0 || k == len(comps) {
			continue
		}
		before := comps[len(comps)-1-k]
		switch {
		case k > 1:
			return "several trailing /**: zot never lets them match nothing"
		case strings.HasSuffix(before, "*") && strings.Trim(before, "*") != "":
			return "in zot, <x>*/** does not match a name whose last component matches <x> with that * empty (app*/** does not match app there); here it does"
		}
	}
	return ""
}

// stripAlternatives is pat without its {...} groups.
func stripAlternatives(pat string) string {
	var b strings.Builder
	depth := 0
	for i := 0; i < len(pat); i++ {
		switch c := pat[i]; {
		case c == '\\' && i+1 < len(pat):
			if depth == 0 {
				b.WriteByte(c)
				b.WriteByte(pat[i+1])
			}
			i++
		case c == '{':
			depth++
		case c == '}' && depth > 0:
			depth--
		case depth == 0:
			b.WriteByte(c)
		}
	}
	return b.String()
}
