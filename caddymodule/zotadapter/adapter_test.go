package zotadapter

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/caddymodule"
)

// adapted is the parts of an adapted config the tests look at.
type adapted struct {
	raw      []byte
	reg      caddymodule.Registry
	listen   []string
	routes   []json.RawMessage // routes before the registry's
	warnings []caddyconfig.Warning
	cfg      caddy.Config
}

// adaptFixture adapts testdata/zot/<name> with its placeholders
// (@DIR@, @PORT@, @UPSTREAM@, ...) replaced by repl.
func adaptFixture(t *testing.T, name string, repl map[string]string) adapted {
	t.Helper()
	body, err := os.ReadFile(filepath.Join("testdata", "zot", name))
	if err != nil {
		t.Fatal(err)
	}
	s := string(body)
	for k, v := range repl {
		s = strings.ReplaceAll(s, k, v)
	}
	return adaptString(t, s)
}

func adaptString(t *testing.T, body string) adapted {
	t.Helper()
	out, warnings, err := caddyconfig.GetAdapter("zot").Adapt([]byte(body), map[string]any{"filename": "config.json"})
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	for _, w := range warnings {
		t.Logf("warning: %s", w)
	}
	return decode(t, out, warnings)
}

func decode(t *testing.T, out []byte, warnings []caddyconfig.Warning) adapted {
	t.Helper()
	a := adapted{raw: out, warnings: warnings}
	if err := json.Unmarshal(out, &a.cfg); err != nil {
		t.Fatal(err)
	}
	var shape struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Listen []string          `json:"listen"`
					Routes []json.RawMessage `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(out, &shape); err != nil {
		t.Fatal(err)
	}
	srv, ok := shape.Apps.HTTP.Servers["zot"]
	if !ok || len(srv.Routes) == 0 {
		t.Fatalf("no server in %s", out)
	}
	a.listen = srv.Listen
	// The registry's route is the one without a matcher; the others
	// (metrics) go before it, or after it when it guards them.
	found := false
	for _, raw := range srv.Routes {
		var route struct {
			Match  json.RawMessage   `json:"match"`
			Handle []json.RawMessage `json:"handle"`
		}
		if err := json.Unmarshal(raw, &route); err != nil {
			t.Fatal(err)
		}
		var h struct {
			Handler string `json:"handler"`
		}
		if route.Match == nil && len(route.Handle) == 1 && json.Unmarshal(route.Handle[0], &h) == nil && h.Handler == "oci_registry" {
			if err := json.Unmarshal(route.Handle[0], &a.reg); err != nil {
				t.Fatal(err)
			}
			found = true
			continue
		}
		a.routes = append(a.routes, raw)
	}
	if !found {
		t.Fatalf("no oci_registry route: %s", out)
	}
	return a
}

// warned reports whether a warning names key and says (part of) msg.
func (a adapted) warned(key, msg string) bool {
	return slices.ContainsFunc(a.warnings, func(w caddyconfig.Warning) bool {
		return w.Directive == key && strings.Contains(w.Message, msg)
	})
}

func TestRegisteredAsCaddyModule(t *testing.T) {
	if caddyconfig.GetAdapter("zot") == nil {
		t.Fatal("no adapter named zot")
	}
	if _, err := caddy.GetModule("caddy.adapters.zot"); err != nil {
		t.Fatal(err)
	}
}

// TestHomelab: anonymous read, a CI user who may push new tags, admins
// by group, a mirror, metrics for one user, log and audit files. zot and
// oci_registry agree on all of it, so there is not one warning.
func TestHomelab(t *testing.T) {
	dir := t.TempDir()
	writeHtpasswd(t, dir, map[string]string{"ci": "ci-pw", "root": "root-pw"})
	a := adaptFixture(t, "homelab.json", map[string]string{"@DIR@": dir, "@PORT@": "5005", "@UPSTREAM@": "http://127.0.0.1:1"})
	if len(a.warnings) != 0 {
		t.Errorf("warnings for a config that maps exactly: %v", a.warnings)
	}
	r := a.reg
	if !slices.Equal(a.listen, []string{"127.0.0.1:5005"}) || r.Storage != dir+"/zot" ||
		time.Duration(r.GCGrace) != 2*time.Hour || time.Duration(r.GCInterval) != 30*time.Minute {
		t.Errorf("listen %v, registry %+v", a.listen, r)
	}
	au := r.Auth
	want := &caddymodule.Auth{
		Htpasswd:  dir + "/htpasswd",
		FailDelay: caddy.Duration(time.Second),
		Realm:     "homelab",
		Groups:    map[string][]string{"admins": {"root"}},
		Admin:     &authscope.AdminPolicy{Groups: []string{"admins"}, Actions: []string{"read", "create", "update", "delete"}},
		Repositories: map[string]authscope.RepositoryPolicy{"**": {
			Anonymous: []string{"read"}, Default: []string{"read"},
			Policies: []authscope.Grant{{Users: []string{"ci"}, Actions: []string{"read", "create"}}},
		}},
		Guards: []caddymodule.PathGuard{{Path: "/metrics", Users: []string{"root"}}},
	}
	if g, w := mustJSON(t, au), mustJSON(t, want); g != w {
		t.Errorf("auth\n got %s\nwant %s", g, w)
	}
	if len(r.Mirrors) != 1 || r.Mirrors[0].Prefix != "hub" || !r.Mirrors[0].InsecureSkipVerify ||
		r.Mirrors[0].Default || r.Mirrors[0].LibraryPrefix != "" || len(r.LocalPrefixes) != 0 {
		t.Errorf("mirrors %s", mustJSON(t, r.Mirrors))
	}
	// The metrics route comes after the registry's, which lets root
	// alone through: its own login_limit holds there.
	if len(a.routes) != 1 || !strings.Contains(string(a.routes[0]), `"/metrics"`) || strings.Contains(string(a.routes[0]), "authentication") {
		t.Errorf("routes %s", a.routes)
	}
	logs := a.cfg.Logging.Logs
	if logs["default"].Level != "INFO" || !strings.Contains(string(logs["default"].WriterRaw), dir+"/zot.log") ||
		!slices.Equal(logs["default"].Exclude, []string{"audit"}) ||
		!strings.Contains(string(logs["audit"].WriterRaw), dir+"/zot-audit.log") || !slices.Equal(logs["audit"].Include, []string{"audit"}) {
		t.Errorf("logs %s", mustJSON(t, logs))
	}
}

// TestPolicy: zot's policy example shape, with groups that only LDAP or
// OpenID could fill, a conditional policy and gc off.
func TestPolicy(t *testing.T) {
	dir := t.TempDir()
	a := adaptFixture(t, "policy.json", map[string]string{"@DIR@": dir, "@PORT@": "5005"})
	r := a.reg
	if time.Duration(r.GCInterval) >= 0 {
		t.Errorf("gc false: gc_interval %v", r.GCInterval)
	}
	reps := r.Auth.Repositories
	if g := reps["infra/*"].Policies; len(g) != 2 || !slices.Equal(g[0].Groups, []string{"ops"}) || !slices.Equal(g[1].Users, []string{"mallory"}) {
		t.Errorf("infra/*: %+v", g)
	}
	if len(reps["prod/**"].Policies) != 0 {
		t.Errorf("the conditional policy was kept: %+v", reps["prod/**"])
	}
	if !slices.Equal(reps["tmp/**"].Default, []string{"read", "create", "update"}) {
		t.Errorf("tmp/**: %+v", reps["tmp/**"])
	}
	if ad := r.Auth.Admin; ad == nil || !slices.Equal(ad.Users, []string{"admin"}) || !slices.Equal(ad.Groups, []string{"developers"}) {
		t.Errorf("admin %+v", r.Auth.Admin)
	}
	for _, w := range [][2]string{
		{"http.accessControl.repositories.infra/*.policies", `group "platformteam"`},
		{"http.accessControl.adminPolicy", `group "admins"`},
		{"http.accessControl.repositories.prod/**.policies[0].conditions", "not evaluated"},
	} {
		if !a.warned(w[0], w[1]) {
			t.Errorf("no warning %q on %s", w[1], w[0])
		}
	}
	// The policy the adapter produced is one oci_registry accepts.
	if _, err := authscope.NewPolicy(authscope.PolicyConfig{Repositories: reps, Groups: r.Auth.Groups, Admin: r.Auth.Admin}); err != nil {
		t.Fatal(err)
	}
}

// TestSync: several registries, content entries with destinations,
// stripPrefix and bare prefixes, a credentials file, on-demand and
// polled registries. A registry zot only polls copies into its
// destination (sync_into); content that cannot be such a copy becomes a
// mirror with a scheduled sync.
func TestSync(t *testing.T) {
	dir := t.TempDir()
	creds := `{"127.0.0.1:7001": {"username": "puller", "password": "s3cret"}}`
	if err := os.WriteFile(filepath.Join(dir, "sync-credentials.json"), []byte(creds), 0o600); err != nil {
		t.Fatal(err)
	}
	a := adaptFixture(t, "sync.json", map[string]string{"@DIR@": dir, "@PORT@": "5005",
		"@UPSTREAM@": "http://127.0.0.1:7001", "@UPSTREAM2@": "http://127.0.0.1:7002"})
	type m struct {
		Prefix, Library, Upstream, User string
		Default, Insecure               bool
		TTL                             time.Duration
		Retries                         int
		Sync                            string
	}
	var got []m
	for _, x := range a.reg.Mirrors {
		e := m{Prefix: x.Prefix, Library: x.LibraryPrefix, Upstream: x.UpstreamPrefix, User: x.Username, Default: x.Default, Insecure: x.InsecureSkipVerify, TTL: time.Duration(x.TagTTL), Retries: -1}
		if x.MaxRetries != nil {
			e.Retries = *x.MaxRetries
		}
		if x.Sync != nil {
			e.Sync = mustJSON(t, x.Sync)
		}
		got = append(got, e)
	}
	want := []m{
		{Prefix: "lib", Upstream: "library", User: "puller", Retries: 3, Sync: `{"every":21600000000000,"content":[{"repository":"library/*"}]}`},
		{Prefix: "vendor", Upstream: "vendor", User: "puller", Retries: 3, Sync: `{"every":21600000000000,"content":[{"repository":"vendor/**","semver":"\u003e=0.0.0-0"}]}`},
		{Prefix: "127.0.0.1", Default: true, Insecure: true, TTL: 10 * time.Minute, Retries: -1},
		{Prefix: "docker.io", Library: "library", Retries: -1},
	}
	if !slices.Equal(got, want) {
		t.Errorf("mirrors\n got %+v\nwant %+v", got, want)
	}
	if len(a.reg.SyncInto) != 1 {
		t.Fatalf("sync_into %s", mustJSON(t, a.reg.SyncInto))
	}
	si := a.reg.SyncInto[0]
	if si.Prefix != "mirror" || si.From != "http://127.0.0.1:7001" || si.Username != "puller" || si.Password != "s3cret" ||
		si.MaxRetries == nil || *si.MaxRetries != 3 || time.Duration(si.RetryDelay) != 5*time.Minute ||
		time.Duration(si.Every) != 6*time.Hour || mustJSON(t, si.Content) != `[{"repository":"team/**","tags":"^1\\."}]` {
		t.Errorf("sync_into %s", mustJSON(t, si))
	}
	// The copy's prefix stays local beside the default mirror.
	if !slices.Equal(a.reg.LocalPrefixes, []string{"mirror"}) {
		t.Errorf("local_prefixes %v", a.reg.LocalPrefixes)
	}
	for _, w := range [][2]string{
		{"extensions.sync.credentialsFile", "copied"},
		{"extensions.sync.registries[0].retryDelay", "twice as long"},
		{"extensions.sync.registries[0].onlySigned", "require_signature"},
		{"extensions.sync.registries[0].content[0].tags.excludeRegex", "synced too"},
		{"extensions.sync.registries[0].content[1]", "also fetched when first pulled"},
		{"extensions.sync.registries[1]", "default mirror"},
		{"extensions.sync.registries[2]", "served under docker.io/ instead"},
		{"extensions.sync.registries[2].syncTimeout", "not mapped"},
		{"extensions.sync", "(mirror) stay local"},
	} {
		if !a.warned(w[0], w[1]) {
			t.Errorf("no warning %q on %s", w[1], w[0])
		}
	}
	for _, w := range [][2]string{
		// upstream_prefix: lib/x is upstream's library/x, vendor/a/b
		// upstream's vendor/a/b, and the names are zot's.
		{"extensions.sync.registries[0].content[1]", "access patterns see"},
		{"extensions.sync.registries[0].content[2]", "access patterns see"},
		{"extensions.sync.registries[0].pollInterval", ""},      // maps
		{"extensions.sync.registries[0].maxRetries", ""},        // maps
		{"extensions.sync.registries[0].content[0].prefix", ""}, // a copy of team/** is filtered, as in zot
	} {
		if a.warned(w[0], w[1]) {
			t.Errorf("warning %q on %s", w[1], w[0])
		}
	}
}

// TestOpenID: the OpenID provider with a credentials file, API keys,
// GitHub (OAuth2, not mapped) and extensions without a counterpart.
func TestOpenID(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "oidc-credentials.json", `{"clientid": "zot-client", "clientsecret": "zot-secret"}`)
	a := adaptFixture(t, "openid.json", map[string]string{"@DIR@": dir, "@PORT@": "5005", "@ISSUER@": "https://id.example/dex"})
	au := a.reg.Auth
	o := au.OIDC
	if o == nil || o.Issuer != "https://id.example/dex" || o.ClientID != "zot-client" || o.ClientSecret != "zot-secret" ||
		o.ExternalURL != "http://127.0.0.1:5005" || o.UsernameClaim != "email" || !slices.Equal(o.Scopes, []string{"profile", "email", "groups"}) {
		t.Errorf("oidc %+v", o)
	}
	if au.APIKeys == nil || time.Duration(au.FailDelay) != 5*time.Second || au.Realm != "zot" {
		t.Errorf("auth %+v", au)
	}
	for _, w := range [][2]string{
		{"http.auth.openid.providers.github", "OAuth2"},
		{"http.auth.openid.providers.oidc.credentialsFile", "client secret"},
		{"extensions.search", "not supported"},
		{"extensions.ui", "not supported"},
		{"storage.dedupe", "always on"},
	} {
		if !a.warned(w[0], w[1]) {
			t.Errorf("no warning %q on %s", w[1], w[0])
		}
	}
}

// TestWarnings: every key that is not carried over is named.
func TestWarnings(t *testing.T) {
	for _, c := range []struct {
		config, key, msg string
	}{
		{`{"storage":{"rootDirectory":"/x","rootDir":"/y"}}`, "storage.rootDir", "not a zot setting"},
		{`{"extensions":{"sync":{"registries":[{"urls":["https://r.example"],"onDemand":true,"content":[{"prefix":"/a/**","tags":{"regex":"^v"}}]}]}}}`,
			"extensions.sync.registries[0].content[0].tags", "on demand"},
		{`{"extensions":{"sync":{"registries":[{"urls":["https://r.example"],"onDemand":true,"pollInterval":"1h","content":[{"prefix":"/a/**","tags":{"regex":"^v"}}]}]}}}`,
			"extensions.sync.registries[0].content[0].tags", "still fetches it"},
		{`{"extensions":{"sync":{"registries":[{"urls":["https://r.example"],"pollInterval":"1h","content":[{"prefix":"/a/{b","destination":"/x"}]}]}}}`,
			"extensions.sync.registries[0].content[0].prefix", "not synced on a schedule"},
		{`{"extensions":{"sync":{"registries":[{"urls":["https://a.example","https://b.example"],"pollInterval":"1h","content":[{"prefix":"**","destination":"/x"}]}]}}}`,
			"extensions.sync.registries[0].content[0]", "copied from https://a.example only"},
		{`{"extensions":{"sync":{"registries":[{"urls":["https://a.example"],"maxRetryDelay":"1m"}]}}}`,
			"extensions.sync.registries[0].maxRetryDelay", "no cap"},
		{`{"storage":{"rootDirectory":"/x","subPaths":{"/a":{"rootDirectory":"/a","retention":{"policies":[{}]}}}}}`, "storage.subPaths./a.retention", "not supported"},
		{`{"storage":{"rootDirectory":"/x","subPaths":{"/":{"rootDirectory":"/a"}}}}`, "storage.subPaths./", "whole registry"},
		{`{"storage":{"rootDirectory":"/x","remoteCache":true,"storageDriver":{"name":"s3","bucket":"b"}}}`, "storage.storageDriver", "does not load"},
		{`{"storage":{"rootDirectory":"/x","storageDriver":{"name":"s3","bucket":"b"}}}`, "storage.storageDriver", "embedded database in /x/meta (metadata_dir)"},
		{`{"storage":{"rootDirectory":"/x","retention":{"policies":[{"repositories":["**"]}]}}}`, "storage.retention", "not supported"},
		{`{"http":{"auth":{"ldap":{"address":"ldap.example","baseDN":"dc=x","userAttribute":"uid","startTLS":true}}}}`, "http.auth.ldap.startTLS", "ldaps://"},
		{`{"http":{"auth":{"htpasswd":{"path":"/h"},"ldap":{"address":"ldap.example","baseDN":"dc=x","userAttribute":"uid","subtreeSearch":true}}}}`, "http.auth.ldap", "htpasswd file lists"},
		{`{"http":{"auth":{"ldap":{"address":"l","baseDN":"dc=x","userAttribute":"uid","insecure":true,"skipVerify":true}}}}`, "http.auth.ldap", "without TLS"},
		{`{"http":{"auth":{"ldap":{"address":"l","baseDN":"dc=x","userAttribute":"uid","bindDN":"cn=r","bindPassword":"pw"}}}}`, "http.auth.ldap.bindPassword", "copied"},
		{`{"http":{"auth":{"mtls":{"identityAttributes":["CommonName"]}}}}`, "http.auth.mtls", "without http.tls.cacert"},
		{`{"http":{"tls":{"cert":"/c","key":"/k","cacert":"/ca"},"auth":{"mtls":{"identityAttributes":["DNSName","CommonName"]}},"accessControl":{"repositories":{"**":{"defaultPolicy":["read"]}}}}}`,
			"http.auth.mtls.identityAttributes", "only the first attribute"},
		{`{"http":{"tls":{"cert":"/c","key":"/k","cacert":"/ca"},"auth":{"mtls":{"identityAttributes":["Subject"]}},"accessControl":{"repositories":{"**":{"defaultPolicy":["read"]}}}}}`,
			"http.auth.mtls.identityAttributes", "sign nobody in"},
		{`{"http":{"tls":{"cert":"/c","key":"/k","cacert":"/ca"},"auth":{"mtls":{"identityAttributes":["URI"],"uriSanPattern":"spiffe://x/(.*)"}},"accessControl":{"repositories":{"**":{"defaultPolicy":["read"]}}}}}`,
			"http.auth.mtls.uriSanPattern", "whole URI"},
		{`{"http":{"auth":{"bearer":{"realm":"https://a/t","service":"s","cert":"/c.pem"}}}}`, "http.auth.bearer", "issuer"},
		{`{"http":{"auth":{"apikey":true}}}`, "http.auth.apikey", "OpenID"},
		{`{"http":{"ratelimit":{"rate":5}}}`, "http.ratelimit", "not mapped"},
		{`{"extensions":{"sync":{"registries":[{"urls":["https://r.example"],"onDemand":true,"content":[{"prefix":"a/**","destination":"/x/y"}]}]}}}`,
			"extensions.sync.registries[0].content[0].destination", "more than one name component"},
		{`{"extensions":{"sync":{"registries":[{"urls":["https://r.example"],"onDemand":true,"content":[{"prefix":"/repo2/repo","destination":"/repo","stripPrefix":true}]}]}}}`,
			"extensions.sync.registries[0].content[0]", "as the local name repo alone"},
		{`{"cluster":{"members":["a:1","b:1"]}}`, "cluster", "no counterpart"},
		{`{"storage":{"rootDirectory":"/x"},"flavour":"vanilla"}`, "flavour", "not a zot setting"},
		{`{"http":{"accessControl":{"adminPolicy":{"users":["a"]}}}}`, "http.accessControl.adminPolicy", "grants no actions"},
		// zot keeps anonymousPolicy from signed-in users; here they have it too.
		{`{"http":{"auth":{"htpasswd":{"path":"/h"}},"accessControl":{"repositories":{"**":{"anonymousPolicy":["read"]}}}}}`,
			"http.accessControl.repositories.**.anonymousPolicy", "signed-in users get these actions too"},
	} {
		a := adaptString(t, c.config)
		if !a.warned(c.key, c.msg) {
			t.Errorf("%s: no warning %q on %s; got %v", c.config, c.msg, c.key, a.warnings)
		}
	}
}

// TestScrub: zot's scrub sets the scrub's interval (zot's default 24h
// when it names none); disabled, the scrub is off.
func TestScrub(t *testing.T) {
	for _, c := range []struct {
		config string
		want   time.Duration
	}{
		{`{"storage":{"rootDirectory":"/x"},"extensions":{"scrub":{"enable":true}}}`, 24 * time.Hour},
		{`{"storage":{"rootDirectory":"/x"},"extensions":{"scrub":{}}}`, 24 * time.Hour},
		{`{"storage":{"rootDirectory":"/x"},"extensions":{"scrub":{"enable":true,"interval":"6h"}}}`, 6 * time.Hour},
		{`{"storage":{"rootDirectory":"/x"},"extensions":{"scrub":{"enable":false,"interval":"6h"}}}`, -1},
		{`{"storage":{"rootDirectory":"/x"}}`, 0}, // the registry's default
	} {
		a := adaptString(t, c.config)
		if got := time.Duration(a.reg.ScrubInterval); got != c.want {
			t.Errorf("%s: scrub_interval %v, want %v", c.config, got, c.want)
		}
		if len(a.warnings) != 0 {
			t.Errorf("%s: warnings %v", c.config, a.warnings)
		}
	}
}

// TestErrors: a value of the wrong type, or a zot action that does not
// exist, stops adapting with the key's name.
func TestErrors(t *testing.T) {
	for _, c := range []struct{ config, want string }{
		{`{"storage":{"gc":"yes"}}`, "storage.gc"},
		{`{"storage":{"gcDelay":"soon"}}`, "storage.gcDelay"},
		{`{"storage":"/var/lib/zot"}`, "storage"},
		{`{"http":{"port":true}}`, "http.port"},
		{`{"http":{"auth":{"failDelay":"5s"}}}`, "http.auth.failDelay"},
		{`{"http":{"accessControl":{"repositories":{"**":{"defaultPolicy":["push"]}}}}}`, "http.accessControl.repositories.**.defaultPolicy"},
		{`{"http":{"accessControl":{"repositories":{"**":{"policies":[{"users":"bob","actions":["read"]}]}}}}}`, "http.accessControl.repositories.**.policies[0].users"},
		{`{"extensions":{"sync":{"registries":[{"urls":"https://r.example"}]}}}`, "extensions.sync.registries[0].urls"},
		{`{"extensions":{"sync":{"registries":[{"urls":["r.example"]}]}}}`, "extensions.sync.registries[0].urls[0]"},
		{`{"log":{"level":"chatty"}}`, "log.level"},
		{`{"extensions":{"scrub":{"interval":"-1h"}}}`, "extensions.scrub.interval"},
		{`{"extensions":{"scrub":{"enable":"yes"}}}`, "extensions.scrub.enable"},
		{`{"http":{"auth":{"ldap":{"address":"h","baseDN":"dc=x"}}}}`, "http.auth.ldap: needs address, baseDN and userAttribute"},
		{`{"http":{"auth":{"ldap":{"address":"h","baseDN":"dc=x","userAttribute":"uid","port":70000}}}}`, "http.auth.ldap.port"},
		{`{"http":{"tls":{"cert":"/c","key":"/k","cacert":"/ca"},"auth":{"mtls":{"identityAttributes":["Serial"]}}}}`, "http.auth.mtls.identityAttributes"},
		{`{"extensions":{"sync":{"registries":[{"urls":["https://r.example"],"maxRetries":-1}]}}}`, "extensions.sync.registries[0].maxRetries"},
		// zot reads a number as nanoseconds: 3600 would poll upstream in a
		// loop, hundreds of requests a second.
		{`{"extensions":{"sync":{"registries":[{"urls":["https://r.example"],"pollInterval":3600,"content":[{"prefix":"/a/**"}]}]}}}`, "extensions.sync.registries[0].pollInterval"},
		{`{"extensions":{"sync":{"registries":[{"urls":["https://r.example"],"pollInterval":"30s","content":[{"prefix":"/a/**"}]}]}}}`, "extensions.sync.registries[0].pollInterval"},
		{`{"storage":{"storageDriver":{"name":"s3"}}}`, "storage.storageDriver: needs a bucket"},
		{`{"storage":{"storageDriver":{"name":"s3","bucket":"b"}}}`, "storage.rootDirectory: required with storageDriver s3"},
		{`{"storage":{"rootDirectory":"/a","RootDirectory":"/b"}}`, "the same key"},
		{`{"storage":`, "zot config"},
		{`[]`, "must be a JSON object"},
	} {
		_, _, err := caddyconfig.GetAdapter("zot").Adapt([]byte(c.config), nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one naming %s", c.config, err, c.want)
		}
	}
}

// TestEmptyAccessControl: accessControl without repositories allows
// nothing in zot; it must not become an open registry.
func TestEmptyAccessControl(t *testing.T) {
	a := adaptString(t, `{"http":{"accessControl":{"groups":{"g":{"users":["u"]}}}}}`)
	if a.reg.Auth == nil || len(a.reg.Auth.Repositories) != 1 || len(a.reg.Auth.Repositories["**"].Anonymous) != 0 {
		t.Fatalf("auth %+v", a.reg.Auth)
	}
}

// TestKeysAnyCase: zot reads keys without regard to case.
func TestKeysAnyCase(t *testing.T) {
	a := adaptString(t, `{"Storage":{"RootDirectory":"/srv/zot","GCDELAY":"3h"},"HTTP":{"Address":"0.0.0.0","Port":5000}}`)
	if a.reg.Storage != "/srv/zot" || time.Duration(a.reg.GCGrace) != 3*time.Hour || !slices.Equal(a.listen, []string{"0.0.0.0:5000"}) {
		t.Errorf("registry %+v listen %v", a.reg, a.listen)
	}
	if len(a.warnings) != 0 || a.reg.Auth != nil {
		t.Errorf("warnings %v auth %+v", a.warnings, a.reg.Auth)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeFile(t *testing.T, dir, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestSubPaths: storage.subPaths become sub_storages with their own
// folder and GC settings, zot's defaults (gc on) applying to each.
func TestSubPaths(t *testing.T) {
	a := adaptString(t, `{"storage":{"rootDirectory":"/x","gcDelay":"2h","subPaths":{
		"/infra/team":{"rootDirectory":"/disk2/team","gc":true,"gcDelay":"10m","gcInterval":"30m","dedupe":false},
		"/cache":{"rootDirectory":"/disk3","gc":false}}}}`)
	got, _ := json.Marshal(a.reg.SubStorages)
	want := `[{"prefix":"cache","storage":"/disk3","gc_interval":-1},{"prefix":"infra/team","storage":"/disk2/team","gc_interval":1800000000000,"gc_grace":600000000000}]`
	if string(got) != want {
		t.Errorf("sub_storages = %s\nwant %s", got, want)
	}
	if a.reg.GCGrace != caddy.Duration(2*time.Hour) {
		t.Errorf("top gc_grace %v", a.reg.GCGrace)
	}
	if !a.warned("storage.subPaths./infra/team.dedupe", "always on") {
		t.Error("no note on a sub-path's dedupe: false")
	}
	if _, _, err := caddyconfig.GetAdapter("zot").Adapt([]byte(`{"storage":{"rootDirectory":"/x","subPaths":{"/a":{"gc":true}}}}`), nil); err == nil ||
		!strings.Contains(err.Error(), "storage.subPaths./a.rootDirectory: required") {
		t.Errorf("sub-path without rootDirectory: %v", err)
	}
}

// TestSyncNothingIsNoMirror: a registry zot neither polls nor fetches on
// demand syncs nothing there, so nothing of it is reachable; as a mirror
// it served the whole upstream, with the registry's credentials.
func TestSyncNothingIsNoMirror(t *testing.T) {
	a := adaptString(t, `{"storage":{"rootDirectory":"/x"},"extensions":{"sync":{"registries":[
		{"urls":["https://private.example"],"onDemand":false,"content":[{"prefix":"/team/**","destination":"/t"}]},
		{"urls":["https://other.example"]}
	]}}}`)
	if len(a.reg.Mirrors) != 0 || len(a.reg.SyncInto) != 0 {
		t.Fatalf("mirrors %s sync_into %s", mustJSON(t, a.reg.Mirrors), mustJSON(t, a.reg.SyncInto))
	}
	if !a.warned("extensions.sync.registries[0].onDemand", "left out") || !a.warned("extensions.sync.registries[1].onDemand", "left out") {
		t.Errorf("warnings %v", a.warnings)
	}
}

// TestMirrorPatterns: beside a default mirror each access pattern also
// stands under the mirror's prefix with its policy, so zot's rules judge
// the names zot gives synced repositories; what cannot be carried over
// exactly is a warning naming the pattern: a pattern that as written
// matches the mirror's names too, and, under Docker Hub's library
// prefix, a pattern that tells alpine and library/alpine apart (one
// repository here).
func TestMirrorPatterns(t *testing.T) {
	a := adaptString(t, `{
  "http": {"auth": {"htpasswd": {"path": "/etc/zot/htpasswd"}},
    "accessControl": {"repositories": {
      "**": {"anonymousPolicy": ["read"]},
      "team/**": {"defaultPolicy": ["read", "create"]},
      "*": {"policies": [{"users": ["alice"], "actions": ["read"]}]},
      "library/*": {"policies": [{"users": ["bob"], "actions": ["read"]}]},
      "*/internal/**": {"policies": [{"users": ["alice"], "actions": ["read"]}]},
      "**/secret": {"policies": [{"users": ["alice"], "actions": ["read"]}]}
    }}},
  "extensions": {"sync": {"enable": true, "registries": [
    {"urls": ["https://registry-1.docker.io"], "onDemand": true}
  ]}}
}`)
	reps := a.reg.Auth.Repositories
	for _, p := range []string{"**", "team/**", "*", "library/*", "*/internal/**", "**/secret"} {
		if rp, ok := reps["docker.io/"+p]; !ok || mustJSON(t, rp) != mustJSON(t, reps[p]) {
			t.Errorf("docker.io/%s: %v %+v, want %s's policy", p, ok, rp, p)
		}
	}
	for _, w := range [][2]string{
		{"http.accessControl.repositories.*/internal/**", "also matches names of the default mirror"},
		{"http.accessControl.repositories.*", "one repository of the mirror docker.io"},
		{"http.accessControl.repositories.library/*", "one repository of the mirror docker.io"},
	} {
		if !a.warned(w[0], w[1]) {
			t.Errorf("no warning %q on %s", w[1], w[0])
		}
	}
	for _, p := range []string{"**", "team/**", "**/secret"} {
		if a.warned("http.accessControl.repositories."+p, "") {
			t.Errorf("a warning on %s, which holds as in zot: %v", p, a.warnings)
		}
	}
}

// TestGlobQuirks: where zot's glob matcher and the registry's part ways
// on a pattern (seen by running both on random patterns and names), the
// adapter says so at load, naming the pattern; patterns both read alike
// get no warning.
func TestGlobQuirks(t *testing.T) {
	for pat, quirk := range map[string]bool{
		"app*/**":           true, // zot: not app itself
		"?*/**":             true,
		"team/[a]*/**":      true,
		"a/**/**":           true,
		"{a,*}{a,*}":        true, // ** from two alternatives: * in zot
		"x/{**,a}":          true,
		"app/**":            false,
		"*/**":              false,
		"**":                false,
		"{prod,release}/**": false,
		"dev/[!s]*/**":      true, // zot: not dev/t
		"*a/**":             false,
		"team/*":            false,
		"**/internal/**":    false,
	} {
		a := adaptString(t, `{"http":{"auth":{"htpasswd":{"path":"/etc/zot/htpasswd"}},
			"accessControl":{"repositories":{"`+pat+`":{"defaultPolicy":["read"]}}}}}`)
		if got := a.warned("http.accessControl.repositories."+pat, "glob matching differs"); got != quirk {
			t.Errorf("%s: warned %v, want %v (%v)", pat, got, quirk, a.warnings)
		}
	}
}
