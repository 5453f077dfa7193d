package caddymodule

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"golang.org/x/crypto/bcrypt"

	"github.com/caddy-oci/caddy-oci/authscope/ldapauth/slapdtest"
)

func TestLDAPCaddyfile(t *testing.T) {
	d := caddyfile.NewTestDispenser(`auth {
		ldap {
			url ldaps://ldap.example:1636
			ca_file /etc/caddy/ldap-ca.pem
			bind_dn cn=registry,ou=services,dc=example,dc=org
			bind_password_file /run/secrets/ldap
			base_dn ou=people,dc=example,dc=org
			search_scope one
			user_attribute sAMAccountName
			user_filter (objectClass=person)
			groups_attribute isMemberOf
			group_base_dn ou=groups,dc=example,dc=org
			group_filter (|(member={dn})(memberUid={user}))
			group_name_attribute ou
			group_names dn
			dial_timeout 2s
			timeout 3s
			max_connections 4
			cache_ttl off
		}
		access team/** {
			group devs read create
		}
	}`)
	d.Next()
	a, err := unmarshalAuth(d)
	if err != nil {
		t.Fatal(err)
	}
	l := a.LDAP
	want := &LDAP{
		URL: "ldaps://ldap.example:1636", CAFile: "/etc/caddy/ldap-ca.pem",
		BindDN: "cn=registry,ou=services,dc=example,dc=org", BindPasswordFile: "/run/secrets/ldap",
		BaseDN: "ou=people,dc=example,dc=org", SearchScope: "one", UserAttribute: "sAMAccountName", UserFilter: "(objectClass=person)",
		GroupsAttribute: "isMemberOf", GroupBaseDN: "ou=groups,dc=example,dc=org",
		GroupFilter: "(|(member={dn})(memberUid={user}))", GroupNameAttribute: "ou", GroupNames: "dn",
		DialTimeout: caddy.Duration(2 * time.Second), Timeout: caddy.Duration(3 * time.Second),
		MaxConnections: 4, CacheTTL: -1,
	}
	if l == nil || *l != *want {
		t.Fatalf("parsed %+v\nwant   %+v", l, want)
	}
	// The group filter's placeholders survive the trip through JSON.
	js, _ := json.Marshal(l)
	if !strings.Contains(string(js), `"group_filter":"(|(member={dn})(memberUid={user}))"`) || !strings.Contains(string(js), `"cache_ttl":-1`) {
		t.Errorf("JSON %s", js)
	}
	// A group that only the directory defines may be named in rules.
	if err := a.validate(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []struct{ in, says string }{
		{"ldap {\n nope x\n}", `unrecognized ldap subdirective "nope"`},
		{"ldap {\n url\n}", "url needs exactly one argument"},
		{"ldap {\n start_tls yes\n}", "start_tls takes no argument"},
		{"ldap {\n max_connections 0\n}", "max_connections"},
		{"ldap {\n cache_ttl soon\n}", "cache_ttl"},
		{"ldap {\n timeout -1s\n}", "timeout"},
		{"ldap x {\n}", "wrong argument count"},
	} {
		d := caddyfile.NewTestDispenser("auth {\n" + bad.in + "\n}")
		d.Next()
		_, err := unmarshalAuth(d)
		if err == nil || !strings.Contains(err.Error(), bad.says) {
			t.Errorf("%q: %v, want an error saying %q", bad.in, err, bad.says)
		}
	}
	// no_groups: the directory brings no groups, so a rule may name only
	// groups the config defines.
	noGroups := `auth {
		ldap {
			url ldap://127.0.0.1
			base_dn dc=example,dc=org
			no_groups
		}
		%s
	}`
	nd := caddyfile.NewTestDispenser(fmt.Sprintf(noGroups, ""))
	nd.Next()
	if na, err := unmarshalAuth(nd); err != nil || !na.LDAP.NoGroups {
		t.Fatalf("no_groups: %v, %+v", err, na)
	}
	nd = caddyfile.NewTestDispenser(fmt.Sprintf(noGroups, "access team/** {\n group devs read create\n }"))
	nd.Next()
	if _, err := unmarshalAuth(nd); err == nil || !strings.Contains(err.Error(), `group "devs" is not defined`) {
		t.Errorf("a rule naming a group nothing defines, with no_groups: %v, want refused", err)
	}
	// Caddy's Caddyfile adapter keeps the filter's {dn} and {user} (they
	// are no placeholder shorthands) and its parentheses.
	out := adaptFront(t, `:5000 {
	oci_registry {
		auth {
			ldap {
				url ldap://127.0.0.1
				base_dn dc=example,dc=org
				group_base_dn ou=groups,dc=example,dc=org
				group_filter (&(objectClass=groupOfNames)(member={dn}))
			}
		}
	}
}`)
	if !strings.Contains(out, `"group_filter":"(\u0026(objectClass=groupOfNames)(member={dn}))"`) && !strings.Contains(out, `"group_filter":"(&(objectClass=groupOfNames)(member={dn}))"`) {
		t.Errorf("adapted: %s", out)
	}
	ok := LDAP{URL: "ldap://127.0.0.1", BaseDN: "dc=example,dc=org"}
	for name, mod := range map[string]func(*LDAP){
		"no url":                      func(l *LDAP) { l.URL = "" },
		"no base_dn":                  func(l *LDAP) { l.BaseDN = "" },
		"http url":                    func(l *LDAP) { l.URL = "http://127.0.0.1" },
		"two passwords":               func(l *LDAP) { l.BindDN, l.BindPassword, l.BindPasswordFile = "cn=r", "a", "b" },
		"bind_dn, no password":        func(l *LDAP) { l.BindDN = "cn=r,dc=example,dc=org" },
		"no_groups, groups_attribute": func(l *LDAP) { l.NoGroups, l.GroupsAttribute = true, "memberOf" },
		"ca_file without TLS":         func(l *LDAP) { l.CAFile = "/ca.pem" },
		"insecure without TLS":        func(l *LDAP) { l.InsecureSkipVerify = true },
		"ca_file and insecure":        func(l *LDAP) { l.URL, l.CAFile, l.InsecureSkipVerify = "ldaps://h", "/ca.pem", true },
		"bad user_filter":             func(l *LDAP) { l.UserFilter = "objectClass=person)" },
		"bad base_dn":                 func(l *LDAP) { l.BaseDN = "people" },
		"group_filter without base":   func(l *LDAP) { l.GroupFilter = "(member={dn})" },
		"injected attribute":          func(l *LDAP) { l.UserAttribute = "uid=*)(cn" },
		"negative max_connections":    func(l *LDAP) { l.MaxConnections = -2 },
		"cache_ttl below off":         func(l *LDAP) { l.CacheTTL = -2 },
		"start_tls on an ldaps url":   func(l *LDAP) { l.URL, l.StartTLS = "ldaps://h", true },
		"url with a search in it":     func(l *LDAP) { l.URL = "ldap://h/dc=example,dc=org??sub?(uid=*)" },
		"url with user and password":  func(l *LDAP) { l.URL = "ldap://u:p@h" },
		"unknown search_scope":        func(l *LDAP) { l.SearchScope = "base" },
		"unknown group_names":         func(l *LDAP) { l.GroupNames = "cn" },
	} {
		l := ok
		mod(&l)
		err := (&Auth{LDAP: &l}).validate()
		if err == nil || !strings.HasPrefix(err.Error(), "ldap") {
			t.Errorf("%s: %v, want an error naming ldap", name, err)
		}
	}
	if err := (&Auth{LDAP: &ok}).validate(); err != nil {
		t.Errorf("ldap alone: %v", err)
	}
}

// TestLDAPREADMEExample: the README's ldap example is a valid auth block.
func TestLDAPREADMEExample(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n### LDAP\n")
	if !ok {
		t.Fatal("README has no LDAP section")
	}
	_, block, ok := strings.Cut(section, "```caddyfile\n")
	if !ok {
		t.Fatal("the LDAP section has no Caddyfile example")
	}
	block, _, _ = strings.Cut(block, "```")
	d := caddyfile.NewTestDispenser(block)
	d.Next()
	a, err := unmarshalAuth(d)
	if err != nil {
		t.Fatal(err)
	}
	if a.LDAP == nil || a.LDAP.BindPasswordFile == "" {
		t.Fatalf("parsed %+v", a.LDAP)
	}
	if err := a.validate(); err != nil {
		t.Fatal(err)
	}
}

// TestLDAPThroughCaddy runs the registry in Caddy from a Caddyfile with
// an LDAP directory (a real slapd) beside an htpasswd file, and pushes
// with go-containerregistry as crane does: who may push where follows
// the directory's users and groups; injections, empty and wrong
// passwords are 401 alike; a directory that is down is 503 (and logged
// with the reason), and logins work again once it is back, without a
// restart of Caddy.
func TestLDAPThroughCaddy(t *testing.T) {
	s := slapdtest.Start(t)
	s.AddUser(t, "alice", "alice-pw")
	s.AddUser(t, "bob", "bob-pw")
	s.AddUser(t, "carol", "carol-ldap-pw")
	s.AddUser(t, "wl", "wl-pw")
	s.AddGroup(t, "devs", "alice", "carol", "wl")
	s.AddGroup(t, "workload:devs", "wl")

	dir := t.TempDir()
	pwFile := filepath.Join(dir, "ldap-password")
	htp := filepath.Join(dir, "htpasswd")
	logFile := filepath.Join(dir, "caddy.log")
	hash, _ := bcrypt.GenerateFromPassword([]byte("carol-htpasswd-pw"), bcrypt.MinCost)
	for f, data := range map[string]string{pwFile: slapdtest.ReaderPassword + "\n", htp: "carol:" + string(hash) + "\n"} {
		if err := os.WriteFile(f, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	addr := freeAddr(t)
	cfg := adaptFront(t, `{
	admin off
	log {
		output file `+logFile+`
		level ERROR
	}
}
http://`+addr+` {
	oci_registry {
		storage `+filepath.Join(dir, "data")+`
		auth {
			fail_delay 10ms
			htpasswd `+htp+`
			group ops bob
			ldap {
				url `+s.TLSURL+`
				ca_file `+s.CAFile+`
				bind_dn `+slapdtest.ReaderDN+`
				bind_password_file `+pwFile+`
				base_dn `+slapdtest.BaseDN+`
				timeout 1s
				cache_ttl off
			}
			access ** {
				default read
			}
			access team/** {
				default read
				group devs read create
			}
			access bob/** {
				default read
				user bob read create
			}
			access ops/** {
				group ops read create
			}
		}
	}
}`)
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopCaddy(t) })

	push := func(user, pw, repo string) error {
		t.Helper()
		img, err := random.Image(512, 1)
		if err != nil {
			t.Fatal(err)
		}
		ref, err := name.ParseReference(addr+"/"+repo+":v1", name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		return remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: user, Password: pw}))
	}
	status := func(err error) int {
		var te *transport.Error
		if errors.As(err, &te) {
			return te.StatusCode
		}
		if err == nil {
			return http.StatusCreated
		}
		t.Fatalf("push: %v", err)
		return 0
	}
	for _, tc := range []struct {
		user, pw, repo string
		want           int
	}{
		{"alice", "alice-pw", "team/app", http.StatusCreated},          // group devs, from memberOf
		{"bob", "bob-pw", "team/app", http.StatusForbidden},            // in no group
		{"bob", "bob-pw", "bob/app", http.StatusCreated},               // user rule
		{"bob", "bob-pw", "ops/app", http.StatusCreated},               // the config's group of the directory's user
		{"alice", "alice-pw", "ops/app", http.StatusForbidden},         // not in ops
		{"ALICE", "alice-pw", "team/upper", http.StatusCreated},        // the directory's alice
		{"carol", "carol-ldap-pw", "team/c", http.StatusUnauthorized},  // htpasswd lists carol: it decides
		{"carol", "carol-htpasswd-pw", "team/c", http.StatusForbidden}, // as the htpasswd user, in no directory group
		{"CAROL", "carol-ldap-pw", "team/c", http.StatusUnauthorized},  // the directory's answer is carol: still htpasswd's
		{"wl", "wl-pw", "team/wl", http.StatusUnauthorized},            // in a group named like a workload's
		{"al*", "alice-pw", "team/app", http.StatusUnauthorized},
		{"*)(uid=alice", "alice-pw", "team/app", http.StatusUnauthorized},
		{"alice", "", "team/app", http.StatusUnauthorized},
		{"alice", "bob-pw", "team/app", http.StatusUnauthorized},
	} {
		if got := status(push(tc.user, tc.pw, tc.repo)); got != tc.want {
			t.Errorf("%s:%s pushes to %s: %d, want %d", tc.user, tc.pw, tc.repo, got, tc.want)
		}
	}

	get := func(user, pw string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/v2/team/app/manifests/v1", nil)
		req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json")
		req.SetBasicAuth(user, pw)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, body
	}
	if resp, body := get("bob", "bob-pw"); resp.StatusCode != http.StatusOK {
		t.Fatalf("bob reads team/app: %s %s", resp.Status, body)
	}
	// Nothing tells an unknown user from a wrong password.
	wrong, wrongBody := get("alice", "wrong")
	unknown, unknownBody := get("mallory", "wrong")
	if wrong.StatusCode != http.StatusUnauthorized || unknown.StatusCode != http.StatusUnauthorized ||
		!bytes.Equal(wrongBody, unknownBody) || wrong.Header.Get("WWW-Authenticate") != unknown.Header.Get("WWW-Authenticate") {
		t.Errorf("wrong password: %s %s %q\nunknown user: %s %s %q", wrong.Status, wrongBody, wrong.Header.Get("WWW-Authenticate"),
			unknown.Status, unknownBody, unknown.Header.Get("WWW-Authenticate"))
	}

	s.Stop()
	resp, body := get("alice", "alice-pw")
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), `"UNAVAILABLE"`) || resp.Header.Get("Retry-After") == "" {
		t.Errorf("directory down: %s %s Retry-After=%q", resp.Status, body, resp.Header.Get("Retry-After"))
	}
	if resp, body := get("alice", "wrong"); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("directory down, wrong password: %s %s (the directory could not say it is wrong)", resp.Status, body)
	}
	if resp, body := get("carol", "carol-htpasswd-pw"); resp.StatusCode != http.StatusOK {
		t.Errorf("directory down, htpasswd user: %s %s", resp.Status, body)
	}
	if log, _ := os.ReadFile(logFile); !bytes.Contains(log, []byte("identity source unavailable")) || !bytes.Contains(log, []byte("connection refused")) {
		t.Errorf("the log does not say why:\n%s", log)
	}

	s.Restart(t)
	if resp, body := get("alice", "alice-pw"); resp.StatusCode != http.StatusOK {
		t.Errorf("directory back: %s %s", resp.Status, body)
	}
}
