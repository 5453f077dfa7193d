package zotadapter

// extensions: sync becomes mirrors, metrics a metrics route, scrub the
// scrub's interval; the rest (search, UI, lint, trust, events) has no
// counterpart.
//
// zot's sync copies upstream repositories into local names: a content
// entry picks upstream names by a glob (prefix), puts them under a
// destination, and may strip the glob's literal part. An oci_registry
// mirror serves `<prefix>/<name>` as upstream's `<upstream_prefix>/<name>`
// (library_prefix: before one-component names only). So:
//   - destination "/d"                   -> mirror d (exact);
//   - destination "/d", stripPrefix, "/lib/*" -> mirror d, upstream_prefix lib;
//   - no destination, "/ns/app/**"       -> mirror ns, upstream_prefix ns
//     (ns/app/x is upstream's ns/app/x, as in zot);
//   - no destination, "**"               -> the default mirror, named after
//     the upstream's host, which takes every name not under a local prefix.
// The content's glob becomes the mirror's repositories (upstream names).

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/metrics"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/caddymodule"
	"github.com/caddy-oci/caddy-oci/internal/configfile"
	"github.com/caddy-oci/caddy-oci/registry/mirrorsync"
)

func (a *adapter) extensions(o *object) error {
	if s, err := o.sub("sync"); err != nil {
		return err
	} else if s != nil {
		if err := a.sync(s); err != nil {
			return err
		}
		s.rest()
	}
	if m, err := o.sub("metrics"); err != nil {
		return err
	} else if m != nil {
		if err := a.metrics(m); err != nil {
			return err
		}
		m.rest()
	}
	if k, err := o.sub("apikey"); err != nil {
		return err
	} else if k != nil {
		on, err := k.boolean("enable", false)
		if err != nil {
			return err
		}
		a.apiKeys = a.apiKeys || on
		k.rest()
	}
	o.unsupported("search", "not supported: no search or CVE API (/v2/_zot/ext/search)")
	o.unsupported("ui", "not supported: no web UI (sign-in and API keys are at /_oci/auth/ with OpenID)")
	if sc, err := o.sub("scrub"); err != nil {
		return err
	} else if sc != nil {
		if err := a.scrub(sc); err != nil {
			return err
		}
		sc.rest()
	}
	o.unsupported("lint", "not supported: manifests are not checked for annotations")
	o.unsupported("trust", "not mapped: zot's trusted keys are uploaded to it, not named in its config; add `require_signature <namespace> { cosign_key <file> notation_cert <file> }` with your keys")
	o.unsupported("events", "not supported: no event sinks")
	o.unsupported("mgmt", "not supported")
	return nil
}

// scrub maps zot's scrub: enabled, every interval (zot's default 24h);
// disabled, off. Without it the registry still scrubs weekly (its
// default), where zot would not scrub at all.
func (a *adapter) scrub(sc *object) error {
	on, err := sc.boolean("enable", true)
	if err != nil {
		return err
	}
	if !on {
		sc.ignore("interval")
		a.reg.ScrubInterval = caddy.Duration(-1)
		return nil
	}
	every, ok, err := sc.duration("interval")
	if err != nil {
		return err
	}
	if !ok {
		every = 24 * time.Hour
	}
	if every <= 0 {
		return fmt.Errorf("extensions.scrub.interval must be positive: %s", every)
	}
	a.reg.ScrubInterval = caddy.Duration(every)
	return nil
}

// syncCreds is zot's sync credentials file: registry address -> login.
type syncCreds map[string]struct{ Username, Password string }

func (a *adapter) sync(s *object) error {
	enable, err := s.boolean("enable", true)
	if err != nil {
		return err
	}
	if !enable {
		s.ignore("registries", "credentialsFile", "downloadDir")
		return nil
	}
	var creds syncCreds
	cf, err := s.str("credentialsFile")
	if err != nil {
		return err
	}
	if cf != "" {
		data, err := configfile.Read(cf)
		if err != nil {
			return fmt.Errorf("extensions.sync.credentialsFile: %w", err)
		}
		if err := json.Unmarshal(data, &creds); err != nil {
			return fmt.Errorf("extensions.sync.credentialsFile: %s: %w", cf, err)
		}
		a.warn("extensions.sync.credentialsFile", "upstream passwords are copied into the adapted config: keep its output as private as "+cf)
	}
	s.unsupported("downloadDir", "not needed: mirrored content goes straight into the store")
	regs, err := s.list("registries")
	if err != nil {
		return err
	}
	for _, r := range regs {
		if err := a.syncRegistry(r, creds); err != nil {
			return err
		}
		r.rest()
	}
	a.localPrefixes()
	return nil
}

func (a *adapter) syncRegistry(r *object, creds syncCreds) error {
	urls, err := r.strings("urls")
	if err != nil {
		return err
	}
	if len(urls) == 0 {
		return fmt.Errorf("%s: needs at least one URL", r.at("urls"))
	}
	base := caddymodule.Mirror{Upstreams: urls}
	first, err := url.Parse(urls[0])
	if err != nil || (first.Scheme != "http" && first.Scheme != "https") || first.Host == "" {
		return fmt.Errorf("%s: %q is not an http(s) URL", r.at("urls[0]"), urls[0])
	}
	if c, ok := creds[first.Host]; ok {
		base.Username, base.Password = c.Username, c.Password
	}
	verify, err := r.boolean("tlsVerify", true)
	if err != nil {
		return err
	}
	base.InsecureSkipVerify = !verify
	certDir, err := r.str("certDir")
	if err != nil {
		return err
	}
	if certDir != "" {
		if _, err := os.Stat(filepath.Join(certDir, "ca.crt")); err == nil {
			base.CAFile = filepath.Join(certDir, "ca.crt")
		}
		if _, err := os.Stat(filepath.Join(certDir, "client.cert")); err == nil {
			a.warn(r.at("certDir"), "client certificates for the upstream are not supported; only ca.crt is used")
		}
	}
	if d, ok, err := r.duration("manifestCheckInterval"); err != nil {
		return err
	} else if ok && d > 0 {
		base.TagTTL = caddy.Duration(d)
	}
	onDemand, err := r.boolean("onDemand", false)
	if err != nil {
		return err
	}
	poll, _, err := r.duration("pollInterval")
	if err != nil {
		return err
	}
	var every caddy.Duration // 0: no scheduled sync
	if poll > 0 {
		if poll < caddymodule.MinSyncEvery {
			// zot reads a number as nanoseconds ("pollInterval": 3600 is
			// 3.6µs): runs would follow each other without a pause.
			return fmt.Errorf("%s: %s is shorter than the %s a scheduled sync waits at least here (a number is nanoseconds: write a duration such as \"1h\")",
				r.at("pollInterval"), poll, caddymodule.MinSyncEvery)
		}
		every = caddy.Duration(poll)
	}
	if pd, err := r.boolean("preserveDigest", true); err != nil {
		return err
	} else if !pd {
		a.warn(r.at("preserveDigest"), "note: manifests are always kept byte for byte, so digests always equal upstream's")
	}
	if err := a.retries(r, &base); err != nil {
		return err
	}
	r.unsupported("onlySigned", "not mapped: zot keeps its trusted keys in its trust store, which a config does not name; add `require_signature <namespace> { cosign_key <file> notation_cert <file> }` with your keys, checked on every pull and by sync")
	r.unsupported("syncTimeout", "not mapped: set the mirror's dial_timeout, response_header_timeout and stall_timeout")
	r.unsupported("reqConcurrent", "not mapped: the mirror's max_concurrent_fills limits blob transfers, sync's concurrency its fetches")
	r.unsupported("reqPerSec", "not supported")
	r.unsupported("disableHTTP2", "not supported")
	r.unsupported("maxIdleConnsPerHost", "not supported")
	r.unsupported("credentialHelper", "not supported: give the credentials in credentialsFile")
	r.unsupported("oauth2CredentialHelper", "not supported: give the credentials in credentialsFile")
	r.ignore("syncLegacyCosignTags") // tags, legacy signature tags included, pass through from upstream

	contents, err := r.list("content")
	if err != nil {
		return err
	}
	if every == 0 && !onDemand {
		// A mirror would fetch what zot never serves, with the
		// registry's credentials.
		a.warn(r.at("onDemand"), "false without pollInterval: zot syncs nothing from this registry, and neither does this config; left out")
		return nil
	}
	if len(contents) == 0 {
		// zot syncs every repository of the registry.
		return a.addContent(r.path, base, syncEntry{glob: "**", every: every, onDemand: onDemand}, first.Hostname())
	}
	for _, c := range contents {
		e := syncEntry{every: every, onDemand: onDemand}
		if e.glob, err = c.str("prefix"); err != nil {
			return err
		}
		if e.dest, err = c.str("destination"); err != nil {
			return err
		}
		if e.strip, err = c.boolean("stripPrefix", false); err != nil {
			return err
		}
		if err := a.syncTags(c, &e); err != nil {
			return err
		}
		if err := a.addContent(c.path, base, e, first.Hostname()); err != nil {
			return err
		}
		c.rest()
	}
	return nil
}

// retries maps maxRetries and retryDelay onto the mirror's.
func (a *adapter) retries(r *object, m *caddymodule.Mirror) error {
	if n, ok, err := r.integer("maxRetries"); err != nil {
		return err
	} else if ok {
		if n < 0 || n > 100 {
			return fmt.Errorf("%s: must be between 0 and 100, not %d", r.at("maxRetries"), n)
		}
		retries := int(n)
		m.MaxRetries = &retries
	}
	if d, ok, err := r.duration("retryDelay"); err != nil {
		return err
	} else if ok && d > 0 {
		m.RetryDelay = caddy.Duration(d)
		if !r.has("maxRetryDelay") {
			a.warn(r.at("retryDelay"), "is the first wait here; each later retry waits twice as long (zot waits the same each time unless maxRetryDelay is set), and an upstream's Retry-After is obeyed")
		}
	}
	r.unsupported("maxRetryDelay", "no cap on the wait between retries to set here: it doubles from retryDelay")
	return nil
}

// syncEntry is one zot sync content entry, and how its registry syncs.
type syncEntry struct {
	glob, dest string
	strip      bool
	// tags: zot's tags.regex; semver: tags.semver.
	tags     string
	semver   bool
	every    caddy.Duration // pollInterval; 0 for none
	onDemand bool
}

// syncTags reads a content entry's tags filters.
func (a *adapter) syncTags(c *object, e *syncEntry) error {
	t, err := c.sub("tags")
	if err != nil || t == nil {
		return err
	}
	defer t.rest()
	if e.tags, err = t.str("regex"); err != nil {
		return err
	}
	if e.semver, err = t.boolean("semver", false); err != nil {
		return err
	}
	t.unsupported("excludeRegex", "not supported: tags it would leave out are synced too")
	switch {
	case e.every == 0:
		a.warn(t.path, "tag filters apply to a scheduled sync only (pollInterval): every tag can be pulled on demand here")
	case e.onDemand:
		a.warn(t.path, "applied to the scheduled sync; a pull of another tag still fetches it from upstream on demand")
	}
	return nil
}

// sync is the scheduled sync of e (glob is upstream's names), or nil
// when e has none or the glob is not one mirrorsync reads.
func (a *adapter) scheduled(at string, e syncEntry, glob string) *caddymodule.Sync {
	if e.every == 0 {
		return nil
	}
	c := caddymodule.SyncContent{Repository: glob, Tags: e.tags}
	if e.semver {
		// zot's semver: true keeps every tag that is a version,
		// pre-releases included; this range is all of them.
		c.Semver = ">=0.0.0-0"
	}
	if err := mirrorsync.CheckContent([]mirrorsync.Content{mirrorsync.Content(c)}); err != nil {
		a.warn(at, fmt.Sprintf("not synced on a schedule: %v", err))
		return nil
	}
	return &caddymodule.Sync{Every: e.every, Content: []caddymodule.SyncContent{c}}
}

// addContent adds what serves one content entry: a sync_into when zot
// only polls into a destination (a local namespace that takes pushes and
// never reaches upstream on a pull, as in zot), else a mirror (with a
// scheduled sync when zot polls).
func (a *adapter) addContent(at string, base caddymodule.Mirror, e syncEntry, host string) error {
	glob := strings.Trim(e.glob, "/")
	if glob == "" {
		glob = "**"
	}
	dest := strings.Trim(e.dest, "/")
	if e.every > 0 && !e.onDemand && dest != "" && !e.strip {
		return a.addSyncInto(at, base, e, glob, dest)
	}
	return a.addMirror(at, base, e, host)
}

// addSyncInto copies upstream's glob into dest/<upstream name>, which is
// zot's destination without stripPrefix.
func (a *adapter) addSyncInto(at string, base caddymodule.Mirror, e syncEntry, glob, dest string) error {
	if !authscope.ValidName(dest) {
		a.warn(at+".destination", fmt.Sprintf("%q is not a repository name prefix here; this content is not synced", dest))
		return nil
	}
	first, _, _ := strings.Cut(dest, "/")
	if a.prefixTaken(first) || a.prefixTaken(dest) {
		a.warn(at, fmt.Sprintf("the prefix %s is already a mirror's or another sync's; this content is not synced", dest))
		return nil
	}
	s := a.scheduled(at+".prefix", e, glob)
	if s == nil {
		return nil
	}
	si := &caddymodule.SyncInto{
		Prefix: dest, From: base.Upstreams[0],
		Username: base.Username, Password: base.Password,
		MaxRetries: base.MaxRetries, RetryDelay: base.RetryDelay,
		CAFile: base.CAFile, InsecureSkipVerify: base.InsecureSkipVerify,
		Sync: *s,
	}
	if len(base.Upstreams) > 1 {
		a.warn(at, fmt.Sprintf("copied from %s only: a scheduled copy has one upstream here", si.From))
	}
	a.reg.SyncInto = append(a.reg.SyncInto, si)
	return nil
}

// prefixTaken reports whether a mirror or sync_into has prefix.
func (a *adapter) prefixTaken(prefix string) bool {
	return slices.ContainsFunc(a.reg.Mirrors, func(m *caddymodule.Mirror) bool { return m.Prefix == prefix }) ||
		slices.ContainsFunc(a.reg.SyncInto, func(s *caddymodule.SyncInto) bool { return s.Prefix == prefix })
}

// addMirror adds the mirror that serves one content entry (prefix glob,
// destination, stripPrefix) of a registry whose first URL's host is host.
func (a *adapter) addMirror(at string, base caddymodule.Mirror, e syncEntry, host string) error {
	glob := strings.Trim(e.glob, "/")
	if glob == "" {
		glob = "**"
	}
	strip := e.strip
	lit, rest := splitGlob(glob)
	dest := strings.Trim(e.dest, "/")
	m := base
	var remainder string // what follows the mirror's prefix in local names
	switch {
	case strings.Contains(dest, "/"):
		a.warn(at+".destination", "a destination of more than one name component cannot be a mirror prefix here; this content is not mirrored")
		return nil
	case dest != "" && !strip:
		m.Prefix, remainder = dest, glob
	case dest != "" && strip:
		m.Prefix, m.UpstreamPrefix, remainder = dest, lit, rest
	case !strip && lit == "":
		m.Default, remainder = true, glob
	case !strip:
		// zot's local name is upstream's: the mirror's prefix is its
		// first component, kept upstream.
		first, after, _ := strings.Cut(lit, "/")
		m.Prefix, m.UpstreamPrefix = first, first
		remainder = strings.Trim(after+"/"+rest, "/")
	default: // stripPrefix without destination: names at the root
		m.Default, m.UpstreamPrefix, remainder = true, lit, rest
	}
	if remainder == "" {
		local := dest
		if !strip {
			local = strings.Trim(dest+"/"+lit, "/")
		}
		a.warn(at, fmt.Sprintf("serves upstream %s as the local name %s alone, which cannot be a mirrored name here (mirrored names are <prefix>/<name>); this content is not mirrored", glob, local))
		return nil
	}
	if m.UpstreamPrefix == "" && mirrorPrefix(host) == "docker.io" {
		// zot's sync client asks Docker Hub for library/<name> when a
		// name has one component, as Docker Hub needs.
		m.LibraryPrefix = "library"
	}
	if m.Default {
		m.Prefix = mirrorPrefix(host)
		if slices.ContainsFunc(a.reg.Mirrors, func(o *caddymodule.Mirror) bool { return o.Default }) {
			m.Default = false
			a.warn(at, fmt.Sprintf("only one upstream can serve names without a prefix here; this one is served under %s/ instead", m.Prefix))
		} else {
			a.warn(at, fmt.Sprintf("names without a prefix are pulled from this upstream as %s/<name> (the default mirror), and they cannot be pushed; pushes go under a local prefix (local_prefixes). Each access pattern P also stands as %s/P, so that they are judged by zot's names", m.Prefix, m.Prefix))
		}
	}
	if !authscope.ValidName(m.Prefix) || strings.Contains(m.Prefix, "/") {
		a.warn(at, fmt.Sprintf("%q cannot be a mirror prefix (one lower-case name component); this content is not mirrored", m.Prefix))
		return nil
	}
	if a.prefixTaken(m.Prefix) {
		a.warn(at, fmt.Sprintf("the prefix %s is already mirrored from another upstream or synced; this content is not mirrored", m.Prefix))
		return nil
	}
	if m.LibraryPrefix != "" {
		a.warn(at, fmt.Sprintf("%s/<name> of one component is fetched from upstream as %s/<name>, and access patterns see it as %s/%s/<name>", m.Prefix, m.LibraryPrefix, m.Prefix, m.LibraryPrefix))
	}
	if glob != "**" {
		// As in zot, only the upstream repositories the content names are
		// reachable (with the registry's credentials): the rest answer
		// 404, never fetched.
		if err := authscope.CheckPattern(glob); err != nil {
			a.warn(at+".prefix", fmt.Sprintf("%v; this content is not mirrored", err))
			return nil
		}
		m.Repositories = []string{glob}
		if why := globQuirk(glob); why != "" {
			a.warn(at+".prefix", fmt.Sprintf("zot's glob matching differs here (%s): the mirror may serve upstream names zot does not, or the other way round", why))
		}
	}
	if m.Sync = a.scheduled(at+".prefix", e, glob); m.Sync != nil && !e.onDemand {
		a.warn(at, fmt.Sprintf("synced every %s into the mirror %s, whose images not yet synced are also fetched when first pulled (zot with onDemand false answers 404 for them)", time.Duration(e.every), m.Prefix))
	}
	a.reg.Mirrors = append(a.reg.Mirrors, &m)
	return nil
}

// localPrefixes keeps the namespaces that access rules name, and those
// sync_into copies into, local when a mirror is the default: in zot,
// pushed and synced repositories live side by side, while here a name is
// either local or the default mirror's.
func (a *adapter) localPrefixes() {
	def := slices.IndexFunc(a.reg.Mirrors, func(m *caddymodule.Mirror) bool { return m.Default })
	if def < 0 {
		return
	}
	var local []string
	add := func(p string) {
		if !slices.Contains(local, p) {
			local = append(local, p)
		}
	}
	if a.reg.Auth != nil {
		for pat := range a.reg.Auth.Repositories {
			alts, _ := authscope.ExpandPattern(pat) // {team,ops}/** keeps both
			for _, alt := range alts {
				first, _, _ := strings.Cut(alt, "/")
				if strings.ContainsAny(first, "*?[\\") || a.prefixTaken(first) {
					continue
				}
				add(first)
			}
		}
	}
	for _, si := range a.reg.SyncInto {
		add(si.Prefix)
	}
	slices.Sort(local)
	if len(local) > 0 {
		a.reg.LocalPrefixes = local
		a.warn("extensions.sync", "the namespaces access rules name or scheduled copies go to ("+strings.Join(local, ", ")+") stay local and take pushes; every other name without a prefix goes to the default mirror "+a.reg.Mirrors[def].Prefix)
	}
}

// splitGlob splits a glob into its literal leading components and the
// rest: "repo3/**" -> "repo3", "**".
func splitGlob(glob string) (lit, rest string) {
	parts := strings.Split(glob, "/")
	i := 0
	for i < len(parts) && !strings.ContainsAny(parts[i], "*?[{\\") {
		i++
	}
	return strings.Join(parts[:i], "/"), strings.Join(parts[i:], "/")
}

// mirrorPrefix names a mirror after its upstream's host, as clients name
// the registry: Docker Hub's hosts are docker.io.
func mirrorPrefix(host string) string {
	host = strings.ToLower(host)
	switch host {
	case "registry-1.docker.io", "index.docker.io", "registry.hub.docker.com":
		return "docker.io"
	}
	return host
}

// metrics serves Caddy's Prometheus metrics (the registry's among them)
// at zot's path, to whom zot's accessControl.metrics allows.
func (a *adapter) metrics(m *object) error {
	on, err := m.boolean("enable", false)
	if err != nil {
		return err
	}
	path := "/metrics"
	if p, err := m.sub("prometheus"); err != nil {
		return err
	} else if p != nil {
		if s, err := p.str("path"); err != nil {
			return err
		} else if s != "" {
			path = s
		}
		p.rest()
	}
	if !on {
		return nil
	}
	route := caddyhttp.Route{
		MatcherSetsRaw: caddyhttp.RawMatcherSets{{"path": caddyconfig.JSON(caddyhttp.MatchPath{path}, &a.warnings)}},
	}
	route.HandlersRaw = append(route.HandlersRaw, caddyconfig.JSONModuleObject(metrics.Metrics{}, "handler", "metrics", &a.warnings))
	if open := !a.signsIn() && !a.hasAccessControl || a.hasAccessControl && a.metricsAnon; open {
		a.before = append(a.before, route)
		return nil
	}
	users := a.metricsUsers
	if !a.hasAccessControl {
		users = nil // every signed-in user, as in zot
	}
	if !a.signsIn() || a.hasAccessControl && len(users) == 0 {
		a.warn("extensions.metrics", "nobody may be let in to "+path+" here; it is not served (metrics stay on Caddy's admin endpoint, /metrics)")
		return nil
	}
	// oci_registry checks the credentials (its login_limit and its bound
	// on password checks at once hold) and passes the request on to the
	// route after it only for these users. Caddy's basic_auth before the
	// registry checked a copy of the hashes with neither: every anonymous
	// request with made-up credentials cost a bcrypt comparison (about a
	// CPU-second at htpasswd's cost 14), as many at once as were sent.
	a.reg.Auth.Guards = append(a.reg.Auth.Guards, caddymodule.PathGuard{Path: path, Users: users})
	a.after = append(a.after, route)
	return nil
}
