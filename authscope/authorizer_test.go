package authscope

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// dockerAuthACL is a docker_auth ACL written against internal names only:
// docker.io/library/* readable by anyone, team/* pushable by the ci user.
func dockerAuthACL(user, typ, name string, asked []string) []string {
	switch {
	case typ == "repository" && strings.HasPrefix(name, "docker.io/library/"):
		return grantIf(asked, "pull")
	case typ == "repository" && strings.HasPrefix(name, "team/") && user == "ci":
		return grantIf(asked, "pull", "push")
	case typ == "repository" && strings.HasPrefix(name, "docker.io/") && user == "ci":
		return grantIf(asked, "pull", "push") // the registry must still refuse push
	case typ == "registry" && name == "catalog" && user == "admin":
		return grantIf(asked, "*")
	}
	return []string{}
}

func tokenAuthorizer(t *testing.T, is *testIssuer, proxy bool) (*Authorizer, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	a, err := NewAuthorizer(Options{
		Token:      is.verifier(),
		TokenRealm: "https://auth.example/token",
		ProxyToken: proxy,
		Names:      testNames(t),
		Audit:      zap.New(core).Named("audit"),
	})
	if err != nil {
		t.Fatal(err)
	}
	return a, logs
}

func bearer(r *http.Request, tok string) *http.Request {
	r.Header.Set("Authorization", "Bearer "+tok)
	return r
}

func denial(t *testing.T, err error, status int, code string) *Denial {
	t.Helper()
	var d *Denial
	if !errors.As(err, &d) {
		t.Fatalf("err = %v, want a Denial", err)
	}
	if d.Status != status || d.Code != code {
		t.Fatalf("denial %d %s (%v), want %d %s", d.Status, d.Code, d.Err, status, code)
	}
	return d
}

func challengeOf(t *testing.T, d *Denial) Challenge {
	t.Helper()
	c, err := ParseChallenge(d.Challenge)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestAuthorizeToken(t *testing.T) {
	is := newTestIssuer(t, nil, dockerAuthACL)
	a, logs := tokenAuthorizer(t, is, false)
	get := func() *http.Request { return httptest.NewRequest(http.MethodGet, "/v2/x", nil) }
	pullDebian := Need{Scopes: []Scope{RepositoryScope("docker.io/library/debian", "pull")}}
	pushCI := Need{Scopes: []Scope{RepositoryScope("team/app", "pull", "push")}}

	t.Run("anonymous gets a challenge naming the internal scope", func(t *testing.T) {
		_, err := a.Authorize(get(), pullDebian)
		d := denial(t, err, 401, "UNAUTHORIZED")
		c := challengeOf(t, d)
		if c.Scheme != "Bearer" {
			t.Fatalf("scheme %s", c.Scheme)
		}
		for k, want := range map[string]string{"realm": "https://auth.example/token", "service": testService, "scope": "repository:docker.io/library/debian:pull"} {
			if v, _ := c.Get(k); v != want {
				t.Errorf("%s=%q, want %q", k, v, want)
			}
		}
		if _, ok := c.Get("error"); ok {
			t.Error("error param on a plain challenge")
		}
	})
	t.Run("pull token", func(t *testing.T) {
		r, err := a.Authorize(bearer(get(), is.sign("", pullOn("docker.io/library/debian"), nil)), pullDebian)
		if err != nil {
			t.Fatal(err)
		}
		if id, ok := IdentityOf(r); !ok || id.Method != "bearer" {
			t.Fatalf("identity %+v", id)
		}
		if !a.CanRead(r, "docker.io/library/debian") || a.CanRead(r, "docker.io/library/ubuntu") {
			t.Error("CanRead does not follow the token")
		}
		if a.CanPush(r, "docker.io/library/debian") {
			t.Error("CanPush with a pull-only token")
		}
	})
	insufficient := func(t *testing.T, tok string, need Need) {
		t.Helper()
		_, err := a.Authorize(bearer(get(), tok), need)
		d := denial(t, err, 401, "UNAUTHORIZED")
		c := challengeOf(t, d)
		if v, _ := c.Get("error"); v != "insufficient_scope" {
			t.Errorf("error=%q", v)
		}
		if v, _ := c.Get("scope"); v != FormatScopes(need.Scopes) {
			t.Errorf("scope=%q", v)
		}
	}
	t.Run("token for another repository", func(t *testing.T) {
		insufficient(t, is.sign("", pullOn("docker.io/library/ubuntu"), nil), pullDebian)
	})
	t.Run("token for the client's form of the name", func(t *testing.T) {
		insufficient(t, is.sign("", pullOn("library/debian"), nil), pullDebian)
	})
	t.Run("pull token used to push", func(t *testing.T) {
		insufficient(t, is.sign("ci", pullOn("team/app"), nil), pushCI)
	})
	t.Run("push token", func(t *testing.T) {
		tok := is.sign("ci", []AccessEntry{{Type: "repository", Name: "team/app", Actions: []string{"pull", "push"}}}, nil)
		r, err := a.Authorize(bearer(get(), tok), pushCI)
		if err != nil {
			t.Fatal(err)
		}
		if !a.CanPush(r, "team/app") || a.CanPush(r, "team/other") {
			t.Error("CanPush does not follow the token")
		}
	})
	t.Run("mount needs pull on the source", func(t *testing.T) {
		tok := is.sign("ci", []AccessEntry{{Type: "repository", Name: "team/app", Actions: []string{"pull", "push"}}}, nil)
		need := Need{Scopes: append(slices.Clone(pushCI.Scopes), RepositoryScope("team/secret", "pull"))}
		insufficient(t, tok, need)
	})
	t.Run("invalid token", func(t *testing.T) {
		tok := is.sign("", pullOn("docker.io/library/debian"), setClaim("iss", "evil"))
		_, err := a.Authorize(bearer(get(), tok), pullDebian)
		d := denial(t, err, 401, "UNAUTHORIZED")
		if v, _ := challengeOf(t, d).Get("error"); v != "invalid_token" {
			t.Errorf("error=%q", v)
		}
		if !errors.Is(err, ErrTokenInvalid) {
			t.Errorf("err %v", err)
		}
	})
	t.Run("push into a mirror namespace", func(t *testing.T) {
		tok := is.sign("ci", []AccessEntry{{Type: "repository", Name: "docker.io/library/debian", Actions: []string{"pull", "push"}}}, nil)
		_, err := a.Authorize(bearer(get(), tok), Need{Scopes: []Scope{RepositoryScope("docker.io/library/debian", "pull", "push")}})
		denial(t, err, 403, "DENIED")
	})
	t.Run("ping", func(t *testing.T) {
		_, err := a.Authorize(get(), Need{})
		d := denial(t, err, 401, "UNAUTHORIZED")
		if _, ok := challengeOf(t, d).Get("scope"); ok {
			t.Error("scope on a ping challenge")
		}
		if _, err := a.Authorize(bearer(get(), is.sign("", nil, nil)), Need{}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("catalog", func(t *testing.T) {
		need := Need{Scopes: []Scope{CatalogScope}}
		_, err := a.Authorize(get(), need)
		d := denial(t, err, 401, "UNAUTHORIZED")
		if v, _ := challengeOf(t, d).Get("scope"); v != "registry:catalog:*" {
			t.Errorf("scope=%q", v)
		}
		tok := is.sign("admin", []AccessEntry{{Type: "registry", Name: "catalog", Actions: []string{"*"}}}, nil)
		if _, err := a.Authorize(bearer(get(), tok), need); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("admin scope", func(t *testing.T) {
		need := Need{Scopes: []Scope{AdminScope(ActionRead)}}
		catalogOnly := is.sign("admin", []AccessEntry{{Type: "registry", Name: "catalog", Actions: []string{"*"}}}, nil)
		_, err := a.Authorize(bearer(get(), catalogOnly), need)
		denial(t, err, 401, "UNAUTHORIZED")
		tok := is.sign("admin", []AccessEntry{{Type: "registry", Name: "admin", Actions: []string{"read"}}}, nil)
		if _, err := a.Authorize(bearer(get(), tok), need); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Authorize(bearer(get(), tok), Need{Scopes: []Scope{AdminScope(ActionUpdate)}}); err == nil {
			t.Error("a token granting admin read passed for update")
		}
	})
	if n := logs.FilterMessage("denied").Len(); n == 0 {
		t.Error("no denial in the audit log")
	}
	for _, e := range logs.All() {
		if e.LoggerName != "audit" {
			t.Errorf("logged on %q", e.LoggerName)
		}
	}
}

func TestChallengeRealmProxy(t *testing.T) {
	is := newTestIssuer(t, nil, dockerAuthACL)
	a, _ := tokenAuthorizer(t, is, true)
	r := httptest.NewRequest(http.MethodHead, "http://mirror.test:5000/docker.io/v2/library/debian/manifests/bookworm?ns=docker.io", nil)
	_, err := a.Authorize(r, Need{
		Scopes: []Scope{RepositoryScope("docker.io/library/debian", "pull")},
		Via:    Via{Host: r.Host, NS: "docker.io", PathPrefix: "docker.io"},
	})
	d := denial(t, err, 401, "UNAUTHORIZED")
	realm, _ := challengeOf(t, d).Get("realm")
	u, perr := url.Parse(realm)
	if perr != nil {
		t.Fatal(perr)
	}
	if u.Scheme != "http" || u.Host != "mirror.test:5000" || u.Path != TokenPath ||
		u.Query().Get("ns") != "docker.io" || u.Query().Get("prefix") != "docker.io" {
		t.Fatalf("realm %s", realm)
	}
}

func basicAuthorizer(t *testing.T) (*Authorizer, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	a, err := NewAuthorizer(Options{
		Htpasswd:   testHtpasswd(t, map[string]string{"ci": "ci-pw", "root": "root-pw", "eve": "eve-pw"}),
		Policy:     blumeopsPolicy(t),
		Names:      testNames(t),
		BasicRealm: "blumeops",
		Audit:      zap.New(core).Named("audit"),
	})
	if err != nil {
		t.Fatal(err)
	}
	return a, logs
}

func TestAuthorizeBasicPolicy(t *testing.T) {
	a, logs := basicAuthorizer(t)
	req := func(user, pass string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/v2/", nil)
		switch {
		case user == "empty basic":
			r.SetBasicAuth("", "") // what skopeo sends when it has no credentials
		case user != "":
			r.SetBasicAuth(user, pass)
		}
		return r
	}
	repo := func(name string, tagMove bool, actions ...string) Need {
		return Need{Scopes: []Scope{RepositoryScope(name, actions...)}, TagMove: tagMove}
	}
	for _, tc := range []struct {
		name       string
		user, pass string
		need       Need
		status     int // 0: allowed
	}{
		{"anonymous pull", "", "", repo("blumeops/app", false, "pull"), 0},
		{"anonymous pull mirror", "", "", repo("docker.io/library/debian", false, "pull"), 0},
		{"anonymous push", "", "", repo("blumeops/app", false, "pull", "push"), 401},
		{"empty Basic credentials pull as anonymous", "empty basic", "", repo("blumeops/app", false, "pull"), 0},
		{"empty Basic credentials push as anonymous", "empty basic", "", repo("blumeops/app", false, "pull", "push"), 401},
		{"anonymous ping", "", "", Need{}, 401},
		{"ci ping", "ci", "ci-pw", Need{}, 0},
		{"ci push new tag", "ci", "ci-pw", repo("blumeops/app", false, "pull", "push"), 0},
		{"ci moves a tag", "ci", "ci-pw", repo("blumeops/app", true, "pull", "push"), 403},
		{"ci deletes", "ci", "ci-pw", repo("blumeops/app", false, "delete"), 403},
		{"ci pushes elsewhere", "ci", "ci-pw", repo("other/app", false, "pull", "push"), 403},
		{"ci pulls base image", "ci", "ci-pw", repo("docker.io/library/debian", false, "pull"), 0},
		{"admin moves a tag", "root", "root-pw", repo("blumeops/app", true, "pull", "push"), 0},
		{"admin deletes", "root", "root-pw", repo("other/x", false, "delete"), 0},
		{"admin pushes into a mirror", "root", "root-pw", repo("docker.io/library/debian", false, "pull", "push"), 403},
		{"wrong password", "ci", "nope", repo("blumeops/app", false, "pull"), 401},
		{"catalog", "", "", Need{Scopes: []Scope{CatalogScope}}, 0},
		{"admin reads admin state", "root", "root-pw", Need{Scopes: []Scope{AdminScope(ActionRead)}}, 0},
		{"admin updates admin state", "root", "root-pw", Need{Scopes: []Scope{AdminScope(ActionUpdate)}}, 0},
		{"ci reads admin state", "ci", "ci-pw", Need{Scopes: []Scope{AdminScope(ActionRead)}}, 403},
		{"anonymous reads admin state", "", "", Need{Scopes: []Scope{AdminScope(ActionRead)}}, 401},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := a.Authorize(req(tc.user, tc.pass), tc.need)
			if tc.status == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			code := "UNAUTHORIZED"
			if tc.status == 403 {
				code = "DENIED"
			}
			d := denial(t, err, tc.status, code)
			if tc.status == 401 {
				c := challengeOf(t, d)
				if realm, _ := c.Get("realm"); c.Scheme != "Basic" || realm != "blumeops" {
					t.Errorf("challenge %s", d.Challenge)
				}
			} else if d.Challenge != "" {
				t.Errorf("challenge on a 403: %s", d.Challenge)
			}
		})
	}
	r, err := a.Authorize(req("eve", "eve-pw"), Need{Scopes: []Scope{CatalogScope}})
	if err != nil {
		t.Fatal(err)
	}
	if !a.CanRead(r, "blumeops/app") {
		t.Error("eve cannot read blumeops/app")
	}
	denied := logs.FilterMessage("denied").All()
	if len(denied) == 0 {
		t.Fatal("no denials logged")
	}
	if f := denied[0].ContextMap(); f["status"] == nil || f["scopes"] == nil {
		t.Errorf("denial fields %v", f)
	}
}

func TestAuditEvent(t *testing.T) {
	a, logs := basicAuthorizer(t)
	r := httptest.NewRequest(http.MethodPut, "/v2/blumeops/app/manifests/v1", nil)
	r.SetBasicAuth("ci", "ci-pw")
	r, err := a.Authorize(r, Need{Scopes: []Scope{RepositoryScope("blumeops/app", "pull", "push")}})
	if err != nil {
		t.Fatal(err)
	}
	a.Audit(r, AuditEvent{Action: ActionCreate, Name: "blumeops/app", Reference: "v1", Digest: "sha256:abc", Status: 201})
	got := logs.FilterMessage(ActionCreate).All()
	if len(got) != 1 {
		t.Fatalf("%d audit entries", len(got))
	}
	f := got[0].ContextMap()
	if f["user"] != "ci" || f["repo"] != "blumeops/app" || f["reference"] != "v1" || f["digest"] != "sha256:abc" || f["status"] != int64(201) {
		t.Errorf("fields %v", f)
	}
}

func TestNewAuthorizerChecks(t *testing.T) {
	is := newTestIssuer(t, nil, nil)
	for name, o := range map[string]Options{
		"nothing":        {},
		"no realm":       {Token: is.verifier()},
		"bad realm":      {Token: is.verifier(), TokenRealm: "ftp://x"},
		"no issuer":      {Token: &TokenVerifier{Keys: is.keySet(), Service: "s"}, TokenRealm: "https://a/t"},
		"no trusted key": {Token: &TokenVerifier{Keys: NewKeySet(), Issuer: "i", Service: "s"}, TokenRealm: "https://a/t"},
	} {
		if _, err := NewAuthorizer(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestAuditLabelsRejectedCredentials: a request that carried credentials
// which did not check out (a revoked, unknown or wrong API key, a wrong
// password) is audited as such, with the method it tried, not as
// anonymous; and the client gets the same answer whichever it was.
func TestAuditLabelsRejectedCredentials(t *testing.T) {
	keys := &APIKeys{Store: newMemKeys()}
	hp := testHtpasswd(t, map[string]string{"ci": "ci-pw"})
	pol, err := NewPolicy(PolicyConfig{Repositories: map[string]RepositoryPolicy{"**": {Default: []string{ActionRead}}}})
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.InfoLevel)
	a, err := NewAuthorizer(Options{Htpasswd: hp, Policy: pol, APIKeys: keys, Audit: zap.New(core).Named("audit")})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := a.Authorize(r, Need{Scopes: []Scope{RepositoryScope("app", ScopePull)}}); err != nil {
			var d *Denial
			if !errors.As(err, &d) {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			w.Header().Set("WWW-Authenticate", d.Challenge)
			w.WriteHeader(d.Status)
			_, _ = w.Write([]byte(d.Message))
		}
	}))
	t.Cleanup(srv.Close)

	revoked, rec, _ := keys.Create("alice", nil, "", 0)
	if err := keys.Revoke("alice", rec.ID); err != nil {
		t.Fatal(err)
	}
	live, _, _ := keys.Create("bob", nil, "", 0)
	unknown := APIKeyPrefix + "0123456789abcdef_" + strings.Repeat("A", 43)
	var answers []string
	for _, tc := range []struct{ name, user, pass, auth string }{
		{"revoked key", "alice", revoked, MethodAPIKey},
		{"unknown key", "x", unknown, MethodAPIKey},
		{"wrong secret of a live key", "bob", otherLast(live), MethodAPIKey},
		{"wrong password", "ci", "nope", MethodBasic},
		{"unknown user", "nobody", "nope", MethodBasic},
	} {
		logs.TakeAll()
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v2/app/tags/list", nil)
		req.SetBasicAuth(tc.user, tc.pass)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		answers = append(answers, fmt.Sprint(resp.StatusCode, resp.Header.Get("WWW-Authenticate"), string(body)))
		got := logs.FilterMessage("denied").All()
		if len(got) != 1 {
			t.Fatalf("%s: %d denials audited", tc.name, len(got))
		}
		f := got[0].ContextMap()
		if f["auth"] != tc.auth || f["credentials"] != "invalid" || f["user"] != "" {
			t.Errorf("%s: audited as %v", tc.name, f)
		}
	}
	for _, ans := range answers[1:] {
		if ans != answers[0] {
			t.Errorf("answers differ: %q", answers)
			break
		}
	}
}
