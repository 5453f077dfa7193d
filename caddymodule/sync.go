package caddymodule

// Scheduled sync (prefetch) of mirrors and sync_into copies: config,
// Caddyfile parsing, and the schedulers' lifecycle. What and how to fetch
// is package registry/mirrorsync (and registry.SyncSource).

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/internal/configfile"
	"github.com/caddy-oci/caddy-oci/registry"
	"github.com/caddy-oci/caddy-oci/registry/mirrorsync"
)

// Sync prefetches upstream content on a schedule, so that the first pull
// in production is served from the store.
type Sync struct {
	// Every is the period between runs, jittered by up to a tenth. The
	// first run is 15s to 45s after the config starts. Default: 6h.
	Every caddy.Duration `json:"every,omitempty"`

	// Concurrency caps the fetches from the upstream that one run has
	// going at once. Default: 4.
	Concurrency int `json:"concurrency,omitempty"`

	// Content selects what is fetched; at least one.
	Content []SyncContent `json:"content"`
}

// SyncContent selects repositories and, in each, the tags that pass every
// filter given.
type SyncContent struct {
	// Repository is an upstream repository name ("library/alpine"), or a
	// glob, read as access patterns are: `*` one name component (or part
	// of one), `**` any number, `{a,b}` either, `[!a]` a class. A glob lists the
	// upstream's catalog, which some registries (Docker Hub) do not serve.
	Repository string `json:"repository"`

	// Tags is a regular expression (RE2) a tag must match.
	Tags string `json:"tags,omitempty"`

	// Semver is a version range a tag must satisfy (">=3.18 <4");
	// tags that are not versions never match.
	Semver string `json:"semver,omitempty"`

	// Platforms of an index that are fetched ("linux/amd64",
	// "linux/arm64/v8"); the index itself is stored whole. Default: all.
	Platforms []string `json:"platforms,omitempty"`

	// Latest keeps the newest N matching tags: by version when every
	// one is a version, else the last N in the upstream's order.
	Latest int `json:"latest,omitempty"`
}

// SyncInto copies repositories of an upstream registry into a local
// prefix on a schedule: pulls by the local name never reach the upstream,
// and the prefix stays an ordinary local namespace (pushable). Digests
// are the upstream's.
type SyncInto struct {
	// Prefix is the local name prefix the upstream's repositories are
	// copied under ("hub" stores library/alpine as hub/library/alpine).
	Prefix string `json:"prefix"`

	// From is the upstream registry's URL.
	From string `json:"from"`

	// Username, Password and CredentialsFile: as in a mirror.
	Username        string `json:"username,omitempty"`
	Password        string `json:"password,omitempty"`
	CredentialsFile string `json:"credentials_file,omitempty"`

	// MaxRetries and RetryDelay: as in a mirror.
	MaxRetries *int           `json:"max_retries,omitempty"`
	RetryDelay caddy.Duration `json:"retry_delay,omitempty"`

	// CAFile and InsecureSkipVerify: as in a mirror.
	CAFile             string `json:"ca_file,omitempty"`
	InsecureSkipVerify bool   `json:"insecure_skip_verify,omitempty"`

	Sync
}

// MinSyncEvery is the shortest time between scheduled runs. A run
// starts again as soon as the period after the last one ends, so a tiny
// one (a zot pollInterval given as a number, which zot reads as
// nanoseconds) would ask upstream for its tags in a loop: about 900
// requests a second for one tag, enough to spend a Docker Hub quota in
// minutes. POST /_oci/sync runs one sooner.
const MinSyncEvery = time.Minute

// MaxSyncConcurrency bounds a sync's concurrency: each run starts that
// many workers, and an upstream is not served faster by more.
const MaxSyncConcurrency = 64

// shortDuration writes d as a config spells it ("1m", not "1m0s").
func shortDuration(d time.Duration) string {
	s := d.String()
	s = strings.TrimSuffix(s, "0s")
	return strings.TrimSuffix(s, "0m")
}

// checkSync checks a sync's settings; where names the directive.
func checkSync(where string, s *Sync) error {
	if s.Every < 0 {
		return fmt.Errorf("%s: every must not be negative", where)
	}
	if s.Every != 0 && time.Duration(s.Every) < MinSyncEvery {
		return fmt.Errorf("%s: every must be at least %s, got %s", where, shortDuration(MinSyncEvery), time.Duration(s.Every))
	}
	if s.Concurrency < 0 {
		return fmt.Errorf("%s: concurrency must not be negative", where)
	}
	if s.Concurrency > MaxSyncConcurrency {
		return fmt.Errorf("%s: concurrency must be at most %d, got %d", where, MaxSyncConcurrency, s.Concurrency)
	}
	if err := mirrorsync.CheckContent(s.contents()); err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	return nil
}

func (s *Sync) contents() []mirrorsync.Content {
	out := make([]mirrorsync.Content, 0, len(s.Content))
	for _, c := range s.Content {
		out = append(out, mirrorsync.Content(c))
	}
	return out
}

// syncRunner holds one config's schedulers: built when the config starts
// (never by `caddy validate`), stopped at its Cleanup.
type syncRunner struct {
	mu     sync.Mutex
	syncs  []*mirrorsync.Sync
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// start builds a scheduler per source and starts them.
func (sr *syncRunner) start(h *registry.Handler, plans []syncPlan, rg *Registry) error {
	sr.mu.Lock()
	defer sr.mu.Unlock()
	if sr.cancel != nil || len(plans) == 0 {
		return nil
	}
	var syncs []*mirrorsync.Sync
	for _, p := range plans {
		s, err := mirrorsync.New(mirrorsync.Config{
			Every:       time.Duration(p.cfg.Every),
			Concurrency: p.cfg.Concurrency,
			Content:     p.cfg.contents(),
			Logger:      rg.logger.Named("sync"),
			Observer:    rg.metrics,
		}, h.SyncSource(p.src))
		if err != nil {
			return err
		}
		syncs = append(syncs, s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sr.syncs, sr.cancel = syncs, cancel
	for _, s := range syncs {
		sr.wg.Go(func() { s.Start(ctx) })
	}
	return nil
}

// stop ends the schedulers and waits for a run in progress to give up.
func (sr *syncRunner) stop() {
	sr.mu.Lock()
	cancel := sr.cancel
	sr.mu.Unlock()
	if cancel != nil {
		cancel()
		sr.wg.Wait()
	}
}

// list returns the schedulers (none before the config started).
func (sr *syncRunner) list() []*mirrorsync.Sync {
	sr.mu.Lock()
	defer sr.mu.Unlock()
	return sr.syncs
}

// syncPlan is one source to sync and how.
type syncPlan struct {
	src *registry.Mirror
	cfg *Sync
}

// buildCopySources turns sync_into blocks into copy sources. names is
// the registry's name mapping: a copy must land in names clients reach
// as local ones, never in a mirror's namespace.
func buildCopySources(ins []*SyncInto, names *authscope.Names, repl *caddy.Replacer, log *zap.Logger) ([]syncPlan, error) {
	var plans []syncPlan
	seen := map[string]bool{}
	for _, si := range ins {
		where := "sync_into " + si.Prefix
		if seen[si.Prefix] {
			return nil, fmt.Errorf("%s: configured twice", where)
		}
		seen[si.Prefix] = true
		probe := si.Prefix + "/x"
		if !authscope.ValidName(probe) {
			return nil, fmt.Errorf("%s: %q is not a repository name prefix", where, si.Prefix)
		}
		if internal, err := names.Internal(probe, authscope.Via{}); err != nil || internal != probe || names.Lookup(probe) != nil {
			return nil, fmt.Errorf("%s: the prefix lies in a mirror's namespace (with a default mirror, list it under local)", where)
		}
		if si.MaxRetries != nil && *si.MaxRetries < 0 {
			return nil, fmt.Errorf("%s: max_retries must not be negative", where)
		}
		if si.RetryDelay < 0 {
			return nil, fmt.Errorf("%s: retry_delay must not be negative", where)
		}
		if err := checkSync(where, &si.Sync); err != nil {
			return nil, err
		}
		user, pass, err := credentials(where, si.Username, si.Password, si.CredentialsFile, credentialHosts([]string{si.From}), repl)
		if err != nil {
			return nil, err
		}
		src, err := registry.NewCopySource(si.Prefix, registry.MirrorConfig{
			Upstreams:          []string{si.From},
			Username:           user,
			Password:           pass,
			MaxRetries:         maxRetries(si.MaxRetries),
			RetryDelay:         time.Duration(si.RetryDelay),
			CAFile:             si.CAFile,
			InsecureSkipVerify: si.InsecureSkipVerify,
			Logger:             log.Named("upstream").With(zap.String("sync_into", si.Prefix)),
		})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		plans = append(plans, syncPlan{src: src, cfg: &si.Sync})
	}
	return plans, nil
}

// credentials returns the user and password of a mirror or sync_into:
// username/password, or the entry of credentialsFile for one of hosts.
// where names the directive in errors, which never repeat a secret.
func credentials(where, user, pass, credentialsFile string, hosts []string, repl *caddy.Replacer) (string, string, error) {
	user, pass = repl.ReplaceAll(user, ""), repl.ReplaceAll(pass, "")
	if credentialsFile == "" {
		return user, pass, nil
	}
	if user != "" || pass != "" {
		return "", "", fmt.Errorf("%s: credentials_file and username/password both set; use one", where)
	}
	file := repl.ReplaceAll(credentialsFile, "")
	data, err := configfile.Read(file)
	if err != nil {
		return "", "", fmt.Errorf("%s: credentials_file: %w", where, err)
	}
	return dockerConfigCredentials(where, file, data, hosts)
}

// dockerConfigCredentials reads a Docker config.json: `auths` maps a
// registry (host, or a URL such as https://index.docker.io/v1/) to
// `auth` (base64 of user:password) or `username` and `password`. The
// first of hosts with an entry wins.
func dockerConfigCredentials(where, file string, data []byte, hosts []string) (string, string, error) {
	var cfg struct {
		Auths map[string]struct {
			Auth     string `json:"auth"`
			Username string `json:"username"`
			Password string `json:"password"`
		} `json:"auths"`
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		// The decoder's message may quote the file; say only where.
		return "", "", fmt.Errorf("%s: credentials_file %s: not a Docker config.json (JSON with \"auths\")", where, file)
	}
	byHost := map[string]string{}
	for key := range cfg.Auths {
		byHost[authHost(key)] = key
	}
	for _, h := range hosts {
		key, ok := byHost[strings.ToLower(h)]
		if !ok {
			continue
		}
		e := cfg.Auths[key]
		if e.Auth != "" {
			raw, err := base64.StdEncoding.DecodeString(e.Auth)
			if err != nil {
				return "", "", fmt.Errorf("%s: credentials_file %s: auth of %q is not base64", where, file, key)
			}
			user, pass, ok := strings.Cut(string(raw), ":")
			if !ok || user == "" {
				return "", "", fmt.Errorf("%s: credentials_file %s: auth of %q is not user:password", where, file, key)
			}
			return user, pass, nil
		}
		if e.Username == "" {
			return "", "", fmt.Errorf("%s: credentials_file %s: entry %q has neither auth nor username", where, file, key)
		}
		return e.Username, e.Password, nil
	}
	return "", "", fmt.Errorf("%s: credentials_file %s: no entry for %s", where, file, strings.Join(hosts, " or "))
}

// authHost is the host (and port) of a config.json key, lower case.
func authHost(key string) string {
	if strings.Contains(key, "://") {
		if u, err := url.Parse(key); err == nil {
			return strings.ToLower(u.Host)
		}
	}
	host, _, _ := strings.Cut(key, "/")
	return strings.ToLower(host)
}

// credentialHosts are the config.json keys that may hold a mirror's
// credentials: its upstreams' hosts, its prefix and aliases.
func credentialHosts(upstreams []string, names ...string) []string {
	var out []string
	for _, s := range upstreams {
		if u, err := url.Parse(s); err == nil && u.Host != "" {
			out = append(out, u.Host)
		}
	}
	return append(out, names...)
}

// unmarshalSync parses
//
//	sync {
//		every <duration>
//		concurrency <n>
//		content <repository or glob> {
//			tags <regex>
//			semver <range>...
//			platforms <os/arch[/variant]>...
//			latest <n>
//		}
//	}
//
// and is also the body of sync_into; other reports whether a
// subdirective it does not know was taken by the caller.
func unmarshalSyncSub(d *caddyfile.Dispenser, where string, s *Sync, sub string, args []string) (bool, error) {
	switch sub {
	case "every":
		if len(args) != 1 {
			return true, d.Errf("%s: every needs one duration", where)
		}
		dur, err := caddy.ParseDuration(args[0])
		if err != nil || dur <= 0 {
			return true, d.Errf("%s: every must be a positive duration, got %q", where, args[0])
		}
		if dur < MinSyncEvery {
			return true, d.Errf("%s: every must be at least %s, got %q", where, shortDuration(MinSyncEvery), args[0])
		}
		s.Every = caddy.Duration(dur)
	case "concurrency":
		if len(args) != 1 {
			return true, d.Errf("%s: concurrency needs one number", where)
		}
		n, err := strconv.Atoi(args[0])
		if err != nil || n <= 0 {
			return true, d.Errf("%s: concurrency must be a positive number, got %q", where, args[0])
		}
		if n > MaxSyncConcurrency {
			return true, d.Errf("%s: concurrency must be at most %d, got %q", where, MaxSyncConcurrency, args[0])
		}
		s.Concurrency = n
	case "content":
		if len(args) != 1 {
			return true, d.Errf("%s: content needs one repository name or glob", where)
		}
		c := SyncContent{Repository: args[0]}
		for nesting := d.Nesting(); d.NextBlock(nesting); {
			csub := d.Val()
			cargs := d.RemainingArgs()
			in := where + ": content " + c.Repository
			switch csub {
			case "tags":
				if len(cargs) != 1 {
					return true, d.Errf("%s: tags needs one regular expression", in)
				}
				c.Tags = cargs[0]
			case "semver":
				if len(cargs) == 0 {
					return true, d.Errf("%s: semver needs a version range", in)
				}
				c.Semver = strings.Join(cargs, " ")
			case "platforms":
				if len(cargs) == 0 {
					return true, d.Errf("%s: platforms needs at least one os/arch", in)
				}
				c.Platforms = append(c.Platforms, cargs...)
			case "latest":
				if len(cargs) != 1 {
					return true, d.Errf("%s: latest needs one number", in)
				}
				n, err := strconv.Atoi(cargs[0])
				if err != nil || n <= 0 {
					return true, d.Errf("%s: latest must be a positive number, got %q", in, cargs[0])
				}
				c.Latest = n
			default:
				return true, d.Errf("%s: unrecognized subdirective %q (known: tags, semver, platforms, latest)", in, csub)
			}
		}
		s.Content = append(s.Content, c)
	default:
		return false, nil
	}
	return true, nil
}

func unmarshalSync(d *caddyfile.Dispenser, where string, args []string) (*Sync, error) {
	if len(args) > 0 {
		return nil, d.Errf("%s: sync takes a block, not %q", where, args[0])
	}
	s := &Sync{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		ok, err := unmarshalSyncSub(d, where+": sync", s, sub, d.RemainingArgs())
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, d.Errf("%s: sync: unrecognized subdirective %q (known: every, concurrency, content)", where, sub)
		}
	}
	if len(s.Content) == 0 {
		return nil, d.Errf("%s: sync needs at least one content", where)
	}
	return s, nil
}

// unmarshalSyncInto parses
//
//	sync_into <local prefix> from <upstream URL> {
//		every, concurrency, content: as in a mirror's sync
//		username <user>
//		password <password>
//		credentials_file <config.json>
//		max_retries <n>
//		retry_delay <duration>
//		ca_file <file>
//		insecure_skip_verify
//	}
func unmarshalSyncInto(d *caddyfile.Dispenser) (*SyncInto, error) {
	args := d.RemainingArgs()
	if len(args) != 3 || args[1] != "from" {
		return nil, d.Err("sync_into needs: sync_into <local prefix> from <upstream URL> { ... }")
	}
	si := &SyncInto{Prefix: args[0], From: args[2]}
	where := "sync_into " + si.Prefix
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		sargs := d.RemainingArgs()
		ok, err := unmarshalSyncSub(d, where, &si.Sync, sub, sargs)
		if err != nil {
			return nil, err
		}
		if ok {
			continue
		}
		ok, err = unmarshalUpstreamSub(d, where, &upstreamFields{
			username: &si.Username, password: &si.Password, credentialsFile: &si.CredentialsFile,
			maxRetries: &si.MaxRetries, retryDelay: &si.RetryDelay,
			caFile: &si.CAFile, insecure: &si.InsecureSkipVerify,
		}, sub, sargs)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, d.Errf("%s: unrecognized subdirective %q (known: every, concurrency, content, username, password, credentials_file, max_retries, retry_delay, ca_file, insecure_skip_verify)", where, sub)
		}
	}
	if len(si.Content) == 0 {
		return nil, d.Errf("%s: needs at least one content", where)
	}
	return si, nil
}

// upstreamFields are the settings a mirror and a sync_into share.
type upstreamFields struct {
	username, password, credentialsFile, caFile *string
	maxRetries                                  **int
	retryDelay                                  *caddy.Duration
	insecure                                    *bool
}

// unmarshalUpstreamSub parses one upstream setting; false when sub is
// none of them.
func unmarshalUpstreamSub(d *caddyfile.Dispenser, where string, f *upstreamFields, sub string, args []string) (bool, error) {
	one := func() (string, error) {
		if len(args) != 1 {
			return "", d.Errf("%s: %s needs exactly one argument", where, sub)
		}
		return args[0], nil
	}
	var err error
	switch sub {
	case "username":
		*f.username, err = one()
	case "password":
		*f.password, err = one()
	case "credentials_file":
		*f.credentialsFile, err = one()
	case "ca_file":
		*f.caFile, err = one()
	case "max_retries":
		var s string
		if s, err = one(); err == nil {
			n, perr := strconv.Atoi(s)
			if perr != nil || n < 0 || n > 100 {
				return true, d.Errf("%s: max_retries must be a number from 0 to 100, got %q", where, s)
			}
			*f.maxRetries = &n
		}
	case "retry_delay":
		var s string
		if s, err = one(); err == nil {
			dur, perr := caddy.ParseDuration(s)
			if perr != nil || dur <= 0 {
				return true, d.Errf("%s: retry_delay must be a positive duration, got %q", where, s)
			}
			*f.retryDelay = caddy.Duration(dur)
		}
	case "insecure_skip_verify":
		if len(args) != 0 {
			return true, d.Errf("%s: insecure_skip_verify takes no argument", where)
		}
		*f.insecure = true
	default:
		return false, nil
	}
	return true, err
}

// maxRetries is registry.MirrorConfig's MaxRetries of a config's
// max_retries (nil: default; 0: none).
func maxRetries(p *int) int {
	switch {
	case p == nil:
		return 0
	case *p == 0:
		return -1
	default:
		return *p
	}
}
