package authscope

// Access policies with zot's semantics: repository patterns, the longest
// matching pattern decides, policies by user and group, a default policy
// for signed-in users, an anonymous policy, and an admin policy over all.

import (
	"fmt"
	"path"
	"slices"
	"sort"
	"strings"
)

// Policy actions.
const (
	ActionRead   = "read"   // pull
	ActionCreate = "create" // push blobs and new tags
	ActionUpdate = "update" // move an existing tag to another manifest
	ActionDelete = "delete"
)

// AllActions are the policy actions, in their usual order.
var AllActions = []string{ActionRead, ActionCreate, ActionUpdate, ActionDelete}

// PolicyConfig is the access policy, as JSON config. The zero value allows
// nothing to anyone.
type PolicyConfig struct {
	// Repositories maps repository patterns to who may do what there.
	// `**` matches any number of name components, `*` one component (or
	// part of one), `{a,b}` either alternative, `[!a]` a character outside a
	// class (zot's globs), other text itself; patterns are internal names
	// (`docker.io/library/*`, `blumeops/**`). For a repository, only the
	// longest matching pattern counts.
	Repositories map[string]RepositoryPolicy `json:"repositories,omitempty"`
	// Groups maps a group name to its members, by user name, whatever
	// the user signed in with.
	Groups map[string][]string `json:"groups,omitempty"`
	// Admin may do its actions everywhere, whatever the repositories say.
	Admin *AdminPolicy `json:"admin,omitempty"`
	// ExternalGroups says that identities bring groups of their own (from
	// an identity provider's claim), so a policy may name a group that
	// Groups does not define. Without it such a name is a typo and an
	// error.
	ExternalGroups bool `json:"-"`
}

// RepositoryPolicy is who may do what on repositories matching a pattern.
type RepositoryPolicy struct {
	// Policies grant actions to users and groups.
	Policies []Grant `json:"policies,omitempty"`
	// Default lists actions every signed-in user has.
	Default []string `json:"default,omitempty"`
	// Anonymous lists actions a caller without credentials has. A
	// signed-in user has them too.
	Anonymous []string `json:"anonymous,omitempty"`
}

// Grant gives actions to users and groups.
type Grant struct {
	Users   []string `json:"users,omitempty"`
	Groups  []string `json:"groups,omitempty"`
	Actions []string `json:"actions"`
}

// AdminPolicy gives actions everywhere.
type AdminPolicy struct {
	Users  []string `json:"users,omitempty"`
	Groups []string `json:"groups,omitempty"`
	// Actions; empty means all of read, create, update and delete.
	Actions []string `json:"actions,omitempty"`
}

// Policy is a checked PolicyConfig.
type Policy struct {
	patterns []policyPattern // longest first
	repos    map[string]RepositoryPolicy
	groups   map[string][]string // user -> groups
	admin    AdminPolicy
}

// NewPolicy checks c: known actions, well-formed patterns, groups that exist.
func NewPolicy(c PolicyConfig) (*Policy, error) {
	p := &Policy{repos: map[string]RepositoryPolicy{}, groups: map[string][]string{}}
	checkActions := func(where string, acts []string) error {
		for _, a := range acts {
			if !slices.Contains(AllActions, a) {
				return fmt.Errorf("%s: unknown action %q (known: %s)", where, a, strings.Join(AllActions, ", "))
			}
		}
		return nil
	}
	for g, users := range c.Groups {
		for _, u := range users {
			p.groups[u] = append(p.groups[u], g)
		}
	}
	checkGroups := func(where string, gs []string) error {
		for _, g := range gs {
			if g == "" {
				return fmt.Errorf("%s: empty group name", where)
			}
			if c.ExternalGroups {
				continue
			}
			if _, ok := c.Groups[g]; !ok {
				return fmt.Errorf("%s: group %q is not defined", where, g)
			}
		}
		return nil
	}
	for pat, rp := range c.Repositories {
		spelled, err := CompilePattern(pat)
		if err != nil {
			return nil, err
		}
		where := "repository pattern " + pat
		for _, g := range rp.Policies {
			if err := checkActions(where, g.Actions); err != nil {
				return nil, err
			}
			if err := checkGroups(where, g.Groups); err != nil {
				return nil, err
			}
		}
		if err := checkActions(where+" default", rp.Default); err != nil {
			return nil, err
		}
		if err := checkActions(where+" anonymous", rp.Anonymous); err != nil {
			return nil, err
		}
		p.repos[pat] = rp
		p.patterns = append(p.patterns, policyPattern{text: pat, spelled: spelled})
	}
	sort.Slice(p.patterns, func(i, j int) bool {
		a, b := p.patterns[i].text, p.patterns[j].text
		if len(a) != len(b) {
			return len(a) > len(b)
		}
		return a < b
	})
	if c.Admin != nil {
		p.admin = *c.Admin
		if err := checkActions("admin", p.admin.Actions); err != nil {
			return nil, err
		}
		if err := checkGroups("admin", p.admin.Groups); err != nil {
			return nil, err
		}
		if len(p.admin.Actions) == 0 {
			p.admin.Actions = AllActions
		}
	}
	return p, nil
}

func checkPattern(pat string) error {
	if pat == "" {
		return fmt.Errorf("empty repository pattern")
	}
	alts, err := expandPattern(pat)
	if err != nil {
		return fmt.Errorf("repository pattern %q: %w", pat, err)
	}
	for _, alt := range alts {
		for _, seg := range strings.Split(alt, "/") {
			if seg == "" {
				return fmt.Errorf("repository pattern %q: empty component", pat)
			}
			if seg == "**" {
				continue
			}
			if strings.Contains(seg, "**") {
				return fmt.Errorf("repository pattern %q: ** must be a whole component", pat)
			}
			if _, err := path.Match(seg, "x"); err != nil {
				return fmt.Errorf("repository pattern %q: %w", pat, err)
			}
		}
	}
	return nil
}

// MatchPattern reports whether repository name matches pattern: `**` is
// any number (zero included) of components, other components are
// path.Match patterns of one component; `{a,b}` is either alternative
// and `[!...]` a character outside the class, as in zot's globs
// (doublestar), so that a zot policy means here what it meant there. A
// pattern that CheckPattern refuses matches nothing.
func MatchPattern(pattern, name string) bool {
	alts, err := expandPattern(pattern)
	return err == nil && spellPattern(alts).Match(name)
}

// Pattern is a repository pattern spelled out once (CompilePattern), for
// callers that match it on every request: MatchPattern spells it out on
// every call, tens of microseconds for a pattern with {} groups.
type Pattern struct {
	alts [][]string // each alternative's components
}

// CompilePattern checks pat (see CheckPattern) and spells it out.
func CompilePattern(pat string) (Pattern, error) {
	if err := checkPattern(pat); err != nil {
		return Pattern{}, err
	}
	alts, _ := expandPattern(pat)
	return spellPattern(alts), nil
}

func spellPattern(alts []string) Pattern {
	p := Pattern{alts: make([][]string, len(alts))}
	for i, alt := range alts {
		p.alts[i] = strings.Split(alt, "/")
	}
	return p
}

// policyPattern is a policy's repository pattern as written, and spelled
// out.
type policyPattern struct {
	text    string
	spelled Pattern
}

// Match reports whether repository name matches the pattern (see
// MatchPattern). The zero Pattern matches nothing.
func (p Pattern) Match(name string) bool { return p.matchSegs(strings.Split(name, "/")) }

// matchSegs is Match of a name split into its components.
func (p Pattern) matchSegs(segs []string) bool {
	for _, alt := range p.alts {
		if matchSegs(alt, segs) {
			return true
		}
	}
	return false
}

func matchSegs(pat, name []string) bool {
	var buf [32]bool // most names: no allocation per request
	at := buf[:0]
	if len(name)+1 > len(buf) {
		at = make([]bool, 0, len(name)+1)
	}
	at = at[:len(name)+1]
	at[0] = true
	for _, p := range pat {
		alive := false
		if p == "**" {
			for j := 1; j <= len(name); j++ {
				at[j] = at[j] || at[j-1]
			}
			alive = true // no prefix lost: one matched before
		} else {
			for j := len(name); j > 0; j-- {
				ok := false
				if at[j-1] {
					ok, _ = path.Match(p, name[j-1])
				}
				at[j] = ok
				alive = alive || ok
			}
			at[0] = false
		}
		if !alive {
			return false
		}
	}
	return at[len(name)]
}

// GroupsOf returns the groups user belongs to.
func (p *Policy) GroupsOf(user string) []string {
	if p == nil || user == "" {
		return nil
	}
	return p.groups[user]
}

// Allows reports whether user (empty: anonymous) may do action on the
// repository name, with the groups the config gives user.
func (p *Policy) Allows(user, action, name string) bool {
	return p.AllowsGroups(user, nil, action, name)
}

// AllowsGroups is Allows for a user who also belongs to groups (from an
// identity provider or an API key): policies match those groups exactly
// as they match the config's groups, which apply as well.
func (p *Policy) AllowsGroups(user string, groups []string, action, name string) bool {
	if p == nil {
		return false
	}
	if user == "" {
		// Groups belong to a signed-in user; an anonymous caller has none
		// whatever it claims.
		groups = nil
	}
	if p.IsAdmin(user, groups, action) {
		return true
	}
	groups = append(slices.Clip(groups), p.groups[user]...)
	segs := strings.Split(name, "/") // once, for every pattern
	for _, pat := range p.patterns {
		if !pat.spelled.matchSegs(segs) {
			continue
		}
		rp := p.repos[pat.text]
		if slices.Contains(rp.Anonymous, action) {
			return true
		}
		if user == "" {
			return false
		}
		if slices.Contains(rp.Default, action) {
			return true
		}
		for _, g := range rp.Policies {
			if slices.Contains(g.Actions, action) && (slices.Contains(g.Users, user) || intersects(g.Groups, groups)) {
				return true
			}
		}
		return false
	}
	return false
}

// ReadPrefixes is where the repositories user (empty: anonymous), with
// groups as in AllowsGroups, may read can lie: every name it may read
// starts with one of prefixes, or all is true when the policy grants it
// read with a pattern whose literal start is empty (`**`, `*/app`) or as
// an admin. The prefixes are the literal starts of the patterns that
// grant it read (before any `*`, `?`, `[` or `\`, without a trailing `/`
// so that `team/**` covers `team`), so they may cover names it may not
// read (a longer pattern decides those); none, and all false, means it
// may read nothing.
func (p *Policy) ReadPrefixes(user string, groups []string) (prefixes []string, all bool) {
	if p == nil {
		return nil, false
	}
	if user == "" {
		groups = nil
	}
	if p.IsAdmin(user, groups, ActionRead) {
		return nil, true
	}
	groups = append(slices.Clip(groups), p.groups[user]...)
	grants := func(rp RepositoryPolicy) bool {
		if slices.Contains(rp.Anonymous, ActionRead) {
			return true
		}
		if user == "" {
			return false
		}
		if slices.Contains(rp.Default, ActionRead) {
			return true
		}
		for _, g := range rp.Policies {
			if slices.Contains(g.Actions, ActionRead) && (slices.Contains(g.Users, user) || intersects(g.Groups, groups)) {
				return true
			}
		}
		return false
	}
	for _, pat := range p.patterns {
		if !grants(p.repos[pat.text]) {
			continue
		}
		for _, alt := range pat.spelled.alts {
			lit := strings.Join(alt, "/")
			if i := strings.IndexAny(lit, "*?[\\"); i >= 0 {
				lit = lit[:i]
			}
			lit = strings.TrimSuffix(lit, "/")
			if lit == "" {
				return nil, true
			}
			prefixes = append(prefixes, lit)
		}
	}
	return prefixes, false
}

// IsAdmin reports whether user (with groups, as in AllowsGroups) is an
// admin with action. An anonymous caller never is.
func (p *Policy) IsAdmin(user string, groups []string, action string) bool {
	if p == nil || user == "" {
		return false
	}
	groups = append(slices.Clip(groups), p.groups[user]...)
	return (slices.Contains(p.admin.Users, user) || intersects(p.admin.Groups, groups)) &&
		slices.Contains(p.admin.Actions, action)
}

// AnonymousTotal reports whether a caller without credentials may do
// everything everywhere, so there is no point in asking for credentials.
func (p *Policy) AnonymousTotal() bool {
	if p == nil {
		return false
	}
	if _, ok := p.repos["**"]; !ok {
		return false
	}
	for _, rp := range p.repos {
		for _, a := range AllActions {
			if !slices.Contains(rp.Anonymous, a) {
				return false
			}
		}
	}
	return true
}

func intersects(a, b []string) bool {
	for _, x := range a {
		if slices.Contains(b, x) {
			return true
		}
	}
	return false
}

// CheckPattern reports what is wrong with a repository pattern (see
// MatchPattern), for other configs that match repositories.
func CheckPattern(pat string) error { return checkPattern(pat) }
