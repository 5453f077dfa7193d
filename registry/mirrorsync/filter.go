package mirrorsync

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/Masterminds/semver/v3"

	"github.com/caddy-oci/caddy-oci/authscope"
)

// Content selects what a sync fetches from upstream: repositories by name
// or glob, and in each the tags that pass every filter set.
type Content struct {
	// Repository is an upstream repository name, or a glob of them: `*`
	// one name component, `**` any number (globs list the upstream's
	// catalog).
	Repository string
	// Tags, if set, is a regular expression a tag must match.
	Tags string
	// Semver, if set, is a version range a tag must satisfy
	// (">=3.18 <4"); tags that are not versions never match.
	Semver string
	// Platforms, if set, are the platforms fetched of an index
	// ("linux/amd64", "linux/arm64/v8"); the index is stored whole.
	Platforms []string
	// Latest, if positive, keeps the newest N matching tags: by version
	// when every one is a version, else the last N in upstream's order.
	Latest int
}

// filter is a checked Content.
type filter struct {
	repo      string
	pattern   authscope.Pattern // repo spelled out once, when a glob
	tags      *regexp.Regexp
	semver    *semver.Constraints
	platforms []platform
	latest    int
}

type platform struct{ os, arch, variant string }

func (p platform) String() string {
	s := p.os + "/" + p.arch
	if p.variant != "" {
		s += "/" + p.variant
	}
	return s
}

// compile checks c.
func (c Content) compile() (filter, error) {
	f := filter{repo: c.Repository, latest: c.Latest}
	if !validPattern(c.Repository) {
		return f, fmt.Errorf("content %q: not a repository name or glob", c.Repository)
	}
	if IsGlob(c.Repository) {
		f.pattern, _ = authscope.CompilePattern(c.Repository) // validPattern checked it
	}
	if c.Tags != "" {
		re, err := regexp.Compile(c.Tags)
		if err != nil {
			return f, fmt.Errorf("content %s: tags: %w", c.Repository, err)
		}
		f.tags = re
	}
	if c.Semver != "" {
		sc, err := semver.NewConstraint(c.Semver)
		if err != nil {
			return f, fmt.Errorf("content %s: semver %q: %w", c.Repository, c.Semver, err)
		}
		f.semver = sc
	}
	for _, p := range c.Platforms {
		parts := strings.Split(p, "/")
		if len(parts) < 2 || len(parts) > 3 || slices.Contains(parts, "") {
			return f, fmt.Errorf("content %s: platform %q: want os/arch or os/arch/variant", c.Repository, p)
		}
		pl := platform{os: parts[0], arch: parts[1]}
		if len(parts) == 3 {
			pl.variant = parts[2]
		}
		f.platforms = append(f.platforms, pl)
	}
	if c.Latest < 0 {
		return f, fmt.Errorf("content %s: latest must not be negative", c.Repository)
	}
	return f, nil
}

// validPattern: a repository name, or a pattern as access rules read
// them (authscope.MatchPattern: zot's globs, classes and {a,b} included).
func validPattern(p string) bool {
	if p == "" || strings.HasPrefix(p, "/") || strings.HasSuffix(p, "/") {
		return false
	}
	if !IsGlob(p) {
		return authscope.ValidName(p) || authscope.ValidName(strings.ToLower(p))
	}
	return authscope.CheckPattern(p) == nil
}

// IsGlob reports whether a content repository is a pattern rather than
// a name (no name holds these characters).
func IsGlob(repo string) bool { return strings.ContainsAny(repo, "*?[{\\") }

// glob reports whether the repository is a pattern rather than a name.
func (f filter) glob() bool { return IsGlob(f.repo) }

// matchRepo reports whether upstream's repository name is selected.
func (f filter) matchRepo(name string) bool {
	return authscope.ValidName(name) && f.pattern.Match(name)
}

// selectTags returns the tags of upstream's list (in its order) that
// pass the filters, at most the newest `latest` of them.
func (f filter) selectTags(tags []string) []string {
	var out []string
	versions := map[string]*semver.Version{}
	for _, t := range tags {
		if f.tags != nil && !f.tags.MatchString(t) {
			continue
		}
		v, err := semver.NewVersion(t)
		if err == nil {
			versions[t] = v
		}
		if f.semver != nil && (err != nil || !f.semver.Check(v)) {
			continue
		}
		out = append(out, t)
	}
	if f.latest <= 0 || len(out) <= f.latest {
		return out
	}
	allVersions := true
	for _, t := range out {
		if versions[t] == nil {
			allVersions = false
			break
		}
	}
	if allVersions {
		slices.SortStableFunc(out, func(a, b string) int { return versions[a].Compare(versions[b]) })
	}
	return out[len(out)-f.latest:]
}

// wantPlatform reports whether an index child of platform p (nil: none
// given) is fetched.
func (f filter) wantPlatform(p *descPlatform) bool {
	if len(f.platforms) == 0 {
		return true
	}
	if p == nil {
		return false
	}
	for _, w := range f.platforms {
		if w.os == p.OS && w.arch == p.Architecture && (w.variant == "" || w.variant == p.Variant) {
			return true
		}
	}
	return false
}
