package authscope

import (
	"slices"
	"testing"
)

// TestReadPrefixes: the catalog reads only under the literal starts of
// the patterns that grant the caller read; every name the policy lets it
// read starts with one of them.
func TestReadPrefixes(t *testing.T) {
	p, err := NewPolicy(PolicyConfig{
		Repositories: map[string]RepositoryPolicy{
			"pub/**":           {Anonymous: []string{"read"}},
			"{lib,tools}/a?c":  {Default: []string{"read"}},
			"team/**":          {Policies: []Grant{{Groups: []string{"devs"}, Actions: []string{"read", "create"}}}},
			"drop/**":          {Policies: []Grant{{Users: []string{"bob"}, Actions: []string{"create"}}}},
			"x/[ab]*":          {Policies: []Grant{{Users: []string{"carol"}, Actions: []string{"read"}}}},
			"**/shared":        {Policies: []Grant{{Users: []string{"dave"}, Actions: []string{"read"}}}},
			"pub/secret/thing": {},
		},
		Groups: map[string][]string{"devs": {"alice"}, "ops": {"root"}},
		Admin:  &AdminPolicy{Groups: []string{"ops"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		user   string
		groups []string
		want   []string
		all    bool
	}{
		{user: "", want: []string{"pub"}},
		{user: "", groups: []string{"devs"}, want: []string{"pub"}}, // anonymous has no groups
		{user: "bob", want: []string{"lib/a", "pub", "tools/a"}},
		{user: "alice", want: []string{"lib/a", "pub", "team", "tools/a"}},
		{user: "eve", groups: []string{"devs"}, want: []string{"lib/a", "pub", "team", "tools/a"}},
		{user: "carol", want: []string{"lib/a", "pub", "tools/a", "x"}},
		{user: "dave", all: true},
		{user: "root", all: true},
	} {
		got, all := p.ReadPrefixes(tc.user, tc.groups)
		slices.Sort(got)
		if all != tc.all || !tc.all && !slices.Equal(got, tc.want) {
			t.Errorf("%q %v: %q all=%v, want %q all=%v", tc.user, tc.groups, got, all, tc.want, tc.all)
		}
	}
	var nilPolicy *Policy
	if got, all := nilPolicy.ReadPrefixes("alice", nil); got != nil || all {
		t.Errorf("nil policy: %q %v", got, all)
	}
}
