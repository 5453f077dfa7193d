package authscope

import (
	"context"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

func TestMatchPattern(t *testing.T) {
	for _, tc := range []struct {
		pat, name string
		want      bool
	}{
		{"**", "a", true},
		{"**", "a/b/c", true},
		{"blumeops/**", "blumeops/app", true},
		{"blumeops/**", "blumeops/a/b", true},
		{"blumeops/**", "blumeopsx/app", false},
		{"blumeops/*", "blumeops/app", true},
		{"blumeops/*", "blumeops/a/b", false},
		{"docker.io/library/*", "docker.io/library/debian", true},
		{"docker.io/library/*", "docker.io/someone/debian", false},
		{"a/**/z", "a/z", true},
		{"a/**/z", "a/b/c/z", true},
		{"a/**/z", "a/b/c", false},
		{"app-*", "app-1", true},
		{"exact/name", "exact/name", true},
		{"exact/name", "exact/name/more", false},
		// zot's globs (doublestar): alternatives, negated classes.
		{"{prod,release}/**", "prod/app", true},
		{"{prod,release}/**", "release/a/b", true},
		{"{prod,release}/**", "staging/app", false},
		{"team/{a,b{1,2}}", "team/b2", true},
		{"team/{a,b{1,2}}", "team/b3", false},
		{"{a/b,c}/x", "a/b/x", true},
		{"[!p]*/**", "staging/app", true},
		{"[!p]*/**", "prod/app", false},
		{"[^p]*/**", "prod/app", false},
		{"\\{x\\}", "x", false},
		{"{unclosed/**", "unclosed/x", false},
	} {
		if got := MatchPattern(tc.pat, tc.name); got != tc.want {
			t.Errorf("MatchPattern(%q, %q) = %v", tc.pat, tc.name, got)
		}
	}
}

// blumeopsPolicy is the example: anonymous read everywhere; group
// artifact-workloads read+create on blumeops/**; group admins everything.
func blumeopsPolicy(t *testing.T) *Policy {
	t.Helper()
	p, err := NewPolicy(PolicyConfig{
		Repositories: map[string]RepositoryPolicy{
			"**": {Anonymous: []string{"read"}},
			"blumeops/**": {
				Anonymous: []string{"read"},
				Policies:  []Grant{{Groups: []string{"artifact-workloads"}, Actions: []string{"read", "create"}}},
			},
		},
		Groups: map[string][]string{"artifact-workloads": {"ci"}, "admins": {"root"}},
		Admin:  &AdminPolicy{Groups: []string{"admins"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPolicyExample(t *testing.T) {
	p := blumeopsPolicy(t)
	for _, tc := range []struct {
		user, action, name string
		want               bool
	}{
		{"", "read", "docker.io/library/debian", true},
		{"", "read", "blumeops/app", true},
		{"", "create", "blumeops/app", false},
		{"ci", "read", "docker.io/library/debian", true},
		{"ci", "create", "blumeops/app", true},
		{"ci", "update", "blumeops/app", false},
		{"ci", "delete", "blumeops/app", false},
		{"ci", "create", "other/app", false},
		{"root", "delete", "blumeops/app", true},
		{"root", "update", "anything/at/all", true},
		{"nobody", "read", "x", true},
		{"nobody", "create", "x", false},
	} {
		if got := p.Allows(tc.user, tc.action, tc.name); got != tc.want {
			t.Errorf("Allows(%q, %s, %s) = %v", tc.user, tc.action, tc.name, got)
		}
	}
	if p.AnonymousTotal() {
		t.Error("AnonymousTotal with read only")
	}
}

func TestPolicyLongestWins(t *testing.T) {
	p, err := NewPolicy(PolicyConfig{Repositories: map[string]RepositoryPolicy{
		"**":        {Default: []string{"read", "create"}},
		"secret/**": {Policies: []Grant{{Users: []string{"alice"}, Actions: []string{"read"}}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if p.Allows("bob", "read", "secret/x") {
		t.Error("default of ** leaked into secret/**")
	}
	if !p.Allows("alice", "read", "secret/x") || p.Allows("alice", "create", "secret/x") {
		t.Error("alice on secret/x")
	}
	if !p.Allows("bob", "create", "open/x") || p.Allows("", "read", "open/x") {
		t.Error("default policy")
	}
}

// TestPolicyZotGlobs: a zot policy that keeps a namespace to one user
// with a glob of zot's (`{prod,release}/**`, `[!d]*/**`) keeps it here
// too. Read by path.Match alone the pattern matched nothing, and those
// repositories fell to `**`, where every signed-in user may push.
func TestPolicyZotGlobs(t *testing.T) {
	p, err := NewPolicy(PolicyConfig{Repositories: map[string]RepositoryPolicy{
		"**":                {Default: []string{ActionRead, ActionCreate}},
		"{prod,release}/**": {Default: []string{ActionRead}, Policies: []Grant{{Users: []string{"ci"}, Actions: []string{ActionRead, ActionCreate}}}},
		"dev/[!s]*/**":      {Default: []string{ActionRead}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		user, name string
		want       bool
	}{
		{"bob", "prod/app", false},
		{"bob", "release/app/x", false},
		{"ci", "prod/app", true},
		{"bob", "staging/app", true},
		{"bob", "dev/tools/app", false},
		{"bob", "dev/sandbox/app", true},
	} {
		if got := p.Allows(tc.user, ActionCreate, tc.name); got != tc.want {
			t.Errorf("%s create %s: %v, want %v", tc.user, tc.name, got, tc.want)
		}
	}
	for _, bad := range []string{"{prod/**", "prod}/**", "{a,}/x", strings.Repeat("{a,b}", 9) + "/**"} {
		if _, err := NewPolicy(PolicyConfig{Repositories: map[string]RepositoryPolicy{bad: {}}}); err == nil {
			t.Errorf("pattern %q accepted", bad)
		}
	}
}

func TestPolicyConfigErrors(t *testing.T) {
	for name, c := range map[string]PolicyConfig{
		"unknown action": {Repositories: map[string]RepositoryPolicy{"**": {Anonymous: []string{"pull"}}}},
		"unknown group":  {Repositories: map[string]RepositoryPolicy{"**": {Policies: []Grant{{Groups: []string{"g"}, Actions: []string{"read"}}}}}},
		"bad pattern":    {Repositories: map[string]RepositoryPolicy{"a/[": {}}},
		"empty segment":  {Repositories: map[string]RepositoryPolicy{"a//b": {}}},
		"partial **":     {Repositories: map[string]RepositoryPolicy{"a**": {}}},
		"admin action":   {Admin: &AdminPolicy{Users: []string{"x"}, Actions: []string{"all"}}},
	} {
		if _, err := NewPolicy(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func testHtpasswd(t testing.TB, users map[string]string) *Htpasswd {
	t.Helper()
	var b []byte
	for u, p := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(p), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, u+":"+string(h)+"\n"...)
	}
	h, err := ParseHtpasswd(b)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestHtpasswd(t *testing.T) {
	h := testHtpasswd(t, map[string]string{"ci": "s3cret"})
	ctx := context.Background()
	for range 2 { // the second check is answered from the cache
		if ok, err := h.Check(ctx, "ci", "s3cret", time.Second); !ok || err != nil {
			t.Fatal("good password refused")
		}
	}
	delay := 50 * time.Millisecond
	for _, up := range [][2]string{{"ci", "wrong"}, {"nobody", "s3cret"}, {"", ""}} {
		start := time.Now()
		if ok, err := h.Check(ctx, up[0], up[1], delay); ok || err != nil {
			t.Fatalf("%v accepted", up)
		}
		if d := time.Since(start); d < delay {
			t.Errorf("%v failed after %v, before fail_delay", up, d)
		}
	}
	for name, data := range map[string]string{
		"md5":      "u:$apr1$abc$defghijklmnopqrstuvwx\n",
		"sha1":     "u:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n",
		"plain":    "u:password\n",
		"no colon": "justuser\n",
	} {
		if _, err := ParseHtpasswd([]byte(data)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := ParseHtpasswd([]byte("# comment\n\n")); err != nil {
		t.Errorf("comments: %v", err)
	}
}

// TestPolicyExternalGroups: groups an identity brings (from an identity
// provider) match policies exactly like the config's groups; policies may
// name them only when ExternalGroups says they exist elsewhere; an
// anonymous caller has no groups whatever it brings.
func TestPolicyExternalGroups(t *testing.T) {
	c := PolicyConfig{
		Repositories: map[string]RepositoryPolicy{
			"**":          {Anonymous: []string{ActionRead}},
			"blumeops/**": {Anonymous: []string{ActionRead}, Policies: []Grant{{Groups: []string{"artifact-workloads"}, Actions: []string{ActionRead, ActionCreate}}}},
		},
		Groups: map[string][]string{"admins": {"root"}},
		Admin:  &AdminPolicy{Groups: []string{"admins"}},
	}
	if _, err := NewPolicy(c); err == nil {
		t.Fatal("an undefined group was accepted without ExternalGroups")
	}
	c.ExternalGroups = true
	p, err := NewPolicy(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		user   string
		groups []string
		action string
		want   bool
	}{
		{"ci", []string{"artifact-workloads"}, ActionCreate, true},
		{"ci", []string{"artifact-workloads"}, ActionUpdate, false},
		{"ci", nil, ActionCreate, false},
		{"alice", []string{"admins"}, ActionDelete, true}, // admin group from the IdP
		{"root", nil, ActionDelete, true},                 // admin group from the config
		{"", []string{"admins"}, ActionDelete, false},
		{"", []string{"artifact-workloads"}, ActionCreate, false},
		{"", nil, ActionRead, true},
	} {
		if got := p.AllowsGroups(tc.user, tc.groups, tc.action, "blumeops/app"); got != tc.want {
			t.Errorf("%q %v %s: %v", tc.user, tc.groups, tc.action, got)
		}
	}
}
