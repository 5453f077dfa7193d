package zotadapter

import (
	"net/http"
	"net/url"
	"slices"
	"testing"

	"github.com/go-ldap/ldap/v3"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/caddy-oci/caddy-oci/authscope/ldapauth/slapdtest"
)

// TestLDAP: zot's LDAP example shape: the service account from
// credentialsFile, TLS from the start (zot dials ldaps:// unless
// insecure), a user filter, memberOf groups, and a policy naming a group
// by its DN.
func TestLDAP(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "ldap-credentials.json", `{"bindDN":"cn=reader,ou=services,dc=example,dc=org","bindPassword":"reader-secret"}`)
	a := adaptFixture(t, "ldap.json", map[string]string{"@DIR@": dir, "@PORT@": "5005", "@LDAPPORT@": "1636", "@LDAPCA@": dir + "/ca.pem"})
	l := a.reg.Auth.LDAP
	if l == nil || l.URL != "ldaps://127.0.0.1:1636" || l.StartTLS || l.CAFile != dir+"/ca.pem" || l.InsecureSkipVerify ||
		l.BindDN != "cn=reader,ou=services,dc=example,dc=org" || l.BindPassword != "reader-secret" ||
		l.BaseDN != "dc=example,dc=org" || l.UserAttribute != "uid" || l.UserFilter != "(objectClass=inetOrgPerson)" ||
		l.GroupsAttribute != "memberOf" || l.GroupNames != "dn" {
		t.Fatalf("ldap %s", mustJSON(t, l))
	}
	if g := a.reg.Auth.Repositories["team/**"].Policies; len(g) != 1 || !slices.Equal(g[0].Groups, []string{"cn=devs,ou=groups,dc=example,dc=org"}) {
		t.Errorf("team/** policies %+v", g)
	}
	if g := a.reg.Auth.Repositories["ops/**"].Policies; len(g) != 1 || !slices.Equal(g[0].Groups, []string{"ops"}) {
		t.Errorf("ops/** policies %+v", g)
	}
	for _, w := range [][2]string{
		{"http.auth.ldap.credentialsFile", "bind password is copied"},
	} {
		if !a.warned(w[0], w[1]) {
			t.Errorf("no warning %q on %s", w[1], w[0])
		}
	}
	if a.warned("http.auth.ldap.subtreeSearch", "") || a.warned("http.auth.ldap.startTLS", "") {
		t.Errorf("warnings for settings that map: %v", a.warnings)
	}

	// How zot connects: TLS from the start unless insecure; StartTLS
	// only on an insecure connection; the port defaults to the scheme's.
	for _, c := range []struct {
		keys, url string
		startTLS  bool
	}{
		{`"port":389`, "ldaps://h:389", false},
		{`"startTLS":true`, "ldaps://h:636", false},
		{`"insecure":true`, "ldap://h:389", false},
		{`"insecure":true,"port":"1389"`, "ldap://h:1389", false},
		{`"insecure":true,"startTLS":true,"port":1389`, "ldap://h:1389", true},
	} {
		a := adaptString(t, `{"http":{"auth":{"ldap":{"address":"h","baseDN":"dc=x","userAttribute":"uid",`+c.keys+`}}}}`)
		if l := a.reg.Auth.LDAP; l.URL != c.url || l.StartTLS != c.startTLS {
			t.Errorf("%s: url %s start_tls %v, want %s %v", c.keys, l.URL, l.StartTLS, c.url, c.startTLS)
		}
	}
}

// TestLDAPServes runs zot's LDAP config against a real slapd: directory
// users push where their directory group (named by DN in the zot
// config) or a config group lets them, read where defaultPolicy does,
// and a wrong password or no credentials get 401.
func TestLDAPServes(t *testing.T) {
	s := slapdtest.Start(t)
	s.AddUser(t, "alice", "alice-pw")
	s.AddUser(t, "bob", "bob-pw")
	s.AddUser(t, "carol", "carol-pw")
	s.AddGroup(t, "devs", "alice")
	// Another devs, in an OU whose groups anyone may make: not the one
	// the policy names by its DN.
	sandbox := "ou=sandbox," + slapdtest.BaseDN
	ou := ldap.NewAddRequest(sandbox, nil)
	ou.Attribute("objectClass", []string{"organizationalUnit"})
	ou.Attribute("ou", []string{"sandbox"})
	g := ldap.NewAddRequest("cn=devs,"+sandbox, nil)
	g.Attribute("objectClass", []string{"groupOfNames"})
	g.Attribute("cn", []string{"devs"})
	g.Attribute("member", []string{slapdtest.UserDN("bob")})
	for _, e := range []*ldap.AddRequest{ou, g} {
		if err := s.Admin(t).Add(e); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	writeFile(t, dir, "ldap-credentials.json", `{"bindDN":"`+slapdtest.ReaderDN+`","bindPassword":"`+slapdtest.ReaderPassword+`"}`)
	u, err := url.Parse(s.TLSURL)
	if err != nil {
		t.Fatal(err)
	}
	ldapsPort := u.Port()
	port := freePort(t)
	serve(t, adaptFixture(t, "ldap.json", map[string]string{"@DIR@": dir, "@PORT@": port, "@LDAPPORT@": ldapsPort, "@LDAPCA@": s.CAFile}))
	host := "127.0.0.1:" + port
	basic := func(user, pw string) authn.Authenticator { return &authn.Basic{Username: user, Password: pw} }

	for _, c := range []struct {
		user, pw, repo string
		want           int
	}{
		{"alice", "alice-pw", "team/app:1", 0},                    // group devs, by its DN in the zot config
		{"alice", "alice-pw", "team/app:1", 0},                    // update: moving a tag
		{"bob", "bob-pw", "team/app:2", http.StatusForbidden},     // in another OU's devs only
		{"carol", "carol-pw", "ops/tool:1", 0},                    // a config group of a directory user
		{"alice", "alice-pw", "ops/tool:2", http.StatusForbidden}, // not in ops
		{"alice", "bob-pw", "team/app:3", http.StatusUnauthorized},
		{"alice", "", "team/app:3", http.StatusUnauthorized},
		{"mallory", "x", "team/app:3", http.StatusUnauthorized},
	} {
		_, err := push(t, host, c.repo, basic(c.user, c.pw))
		if got := status(err); got != c.want || (c.want == 0 && err != nil) {
			t.Errorf("%s:%s pushes %s: %v, want status %d", c.user, c.pw, c.repo, err, c.want)
		}
	}
	if _, err := remote.Image(ref(t, host, "team/app:1"), remote.WithAuth(basic("bob", "bob-pw"))); err != nil {
		t.Errorf("bob pulls (defaultPolicy read): %v", err)
	}
	if _, err := remote.Image(ref(t, host, "team/app:1")); status(err) != http.StatusUnauthorized {
		t.Errorf("anonymous pull: %v, want 401", err)
	}
}

// TestLDAPOneLevelServes: zot without subtreeSearch looks for users only
// directly below baseDN, so an account in an OU under it (disabled
// accounts, contractors) does not sign in. Searched in the whole subtree,
// it did, and with no accessControl (every signed-in user may do
// everything, as in zot) it could push anywhere.
func TestLDAPOneLevelServes(t *testing.T) {
	s := slapdtest.Start(t)
	s.AddUser(t, "alice", "alice-pw")
	nested := "ou=disabled," + slapdtest.PeopleDN
	for _, e := range []*ldap.AddRequest{
		ldap.NewAddRequest(nested, nil),
		ldap.NewAddRequest("uid=mallory,"+nested, nil),
	} {
		if e.DN == nested {
			e.Attribute("objectClass", []string{"organizationalUnit"})
			e.Attribute("ou", []string{"disabled"})
		} else {
			e.Attribute("objectClass", []string{"inetOrgPerson"})
			for _, k := range []string{"uid", "cn", "sn"} {
				e.Attribute(k, []string{"mallory"})
			}
			e.Attribute("userPassword", []string{"mallory-pw"})
		}
		if err := s.Admin(t).Add(e); err != nil {
			t.Fatal(err)
		}
	}
	u, err := url.Parse(s.TLSURL)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	port := freePort(t)
	a := adaptString(t, `{
  "storage": {"rootDirectory": "`+dir+`/zot"},
  "http": {"address": "127.0.0.1", "port": "`+port+`", "auth": {"ldap": {
    "address": "127.0.0.1", "port": `+u.Port()+`, "caCert": "`+s.CAFile+`",
    "bindDN": "`+slapdtest.ReaderDN+`", "bindPassword": "`+slapdtest.ReaderPassword+`",
    "baseDN": "`+slapdtest.PeopleDN+`", "userAttribute": "uid"
  }, "failDelay": 0}}
}`)
	if a.warned("http.auth.ldap.subtreeSearch", "") {
		t.Errorf("a warning for a setting that maps: %v", a.warnings)
	}
	serve(t, a)
	host := "127.0.0.1:" + port
	if _, err := push(t, host, "team/app:1", &authn.Basic{Username: "alice", Password: "alice-pw"}); err != nil {
		t.Fatalf("alice (directly below baseDN): %v", err)
	}
	if _, err := push(t, host, "team/app:2", &authn.Basic{Username: "mallory", Password: "mallory-pw"}); status(err) != http.StatusUnauthorized {
		t.Fatalf("mallory (in an OU below baseDN): %v, want 401", err)
	}
}

// TestLDAPWithoutGroupAttributeServes: zot reads a user's directory
// groups only from userGroupAttribute; without it an LDAP user's groups
// are those accessControl.groups lists it in, nothing else. The adapted
// config read memberOf anyway (ldap's default), so alice, a directory
// member of cn=devs, got the rules of the accessControl group zot's
// config names by that DN and lists only carol in.
func TestLDAPWithoutGroupAttributeServes(t *testing.T) {
	s := slapdtest.Start(t)
	s.AddUser(t, "alice", "alice-pw")
	s.AddUser(t, "carol", "carol-pw")
	s.AddGroup(t, "devs", "alice")
	u, err := url.Parse(s.TLSURL)
	if err != nil {
		t.Fatal(err)
	}
	devs := "cn=devs," + slapdtest.GroupsDN
	dir := t.TempDir()
	port := freePort(t)
	a := adaptString(t, `{
  "storage": {"rootDirectory": "`+dir+`/zot"},
  "http": {"address": "127.0.0.1", "port": "`+port+`",
    "auth": {"ldap": {
      "address": "127.0.0.1", "port": `+u.Port()+`, "caCert": "`+s.CAFile+`",
      "bindDN": "`+slapdtest.ReaderDN+`", "bindPassword": "`+slapdtest.ReaderPassword+`",
      "baseDN": "`+slapdtest.PeopleDN+`", "userAttribute": "uid"
    }, "failDelay": 0},
    "accessControl": {
      "groups": {"`+devs+`": {"users": ["carol"]}},
      "repositories": {"**": {
        "defaultPolicy": ["read"],
        "policies": [{"groups": ["`+devs+`"], "actions": ["read", "create"]}]
      }}
    }
  }
}`)
	if l := a.reg.Auth.LDAP; l == nil || !l.NoGroups || l.GroupsAttribute != "" {
		t.Fatalf("ldap %s: want no_groups", mustJSON(t, l))
	}
	serve(t, a)
	host := "127.0.0.1:" + port
	if _, err := push(t, host, "team/app:1", &authn.Basic{Username: "carol", Password: "carol-pw"}); err != nil {
		t.Fatalf("carol (listed in the config group): %v", err)
	}
	if _, err := push(t, host, "team/app:2", &authn.Basic{Username: "alice", Password: "alice-pw"}); status(err) != http.StatusForbidden {
		t.Fatalf("alice (a member of %s in the directory only): %v, want 403", devs, err)
	}
	if _, err := remote.Image(ref(t, host, "team/app:1"), remote.WithAuth(&authn.Basic{Username: "alice", Password: "alice-pw"})); err != nil {
		t.Errorf("alice pulls (defaultPolicy read): %v", err)
	}
}
