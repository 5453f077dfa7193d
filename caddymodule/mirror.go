package caddymodule

import (
	"fmt"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/registry"
	"github.com/caddy-oci/caddy-oci/registry/mirrorsync"
	"github.com/caddy-oci/caddy-oci/registry/upstream"
)

// Mirror makes one upstream registry available read-only under a name
// prefix: `localhost/v2/docker.io/library/debian` pulls through to Docker
// Hub. Blobs and manifests by digest are fetched once; tags are asked
// upstream again after tag_ttl.
type Mirror struct {
	// Prefix is the first component of the mirrored names, usually the
	// upstream's host name: "docker.io", "ghcr.io", "quay.io".
	Prefix string `json:"prefix"`

	// Upstreams are the registry URLs to fetch from, tried in order (the
	// next on connection errors and 5xx). Default: https://registry-1.docker.io
	// for docker.io, https://<prefix> for any other prefix. A URL with
	// `user:password@` is refused: set username and password instead.
	Upstreams []string `json:"upstreams,omitempty"`

	// Username and Password for the upstream; placeholders such as
	// {env.DOCKERHUB_TOKEN} are replaced. Empty: anonymous pulls.
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`

	// CredentialsFile is a Docker config.json (as `docker login` writes)
	// whose `auths` entry for the upstream's host (or the prefix, or an
	// alias) holds the credentials: `auth` (base64 of user:password) or
	// `username` and `password`. Read when the config loads; an
	// alternative to username and password.
	CredentialsFile string `json:"credentials_file,omitempty"`

	// MaxRetries is how many more times a request the upstream answered
	// 429 or 5xx is sent (per upstream URL). Default: 2; 0: none.
	MaxRetries *int `json:"max_retries,omitempty"`

	// RetryDelay is the wait before the first retry when the upstream
	// sent no Retry-After; each later one doubles it (with jitter).
	// Default: 100ms.
	RetryDelay caddy.Duration `json:"retry_delay,omitempty"`

	// Sync prefetches content from the upstream on a schedule.
	Sync *Sync `json:"sync,omitempty"`

	// TagTTL is how long a fetched tag is served without asking upstream.
	// After it, one HEAD upstream decides whether to fetch again.
	// Default: 5m.
	TagTTL caddy.Duration `json:"tag_ttl,omitempty"`

	// StaleIfError is how long past its TTL a cached tag is still served
	// when upstream fails or is unreachable. Default: 24h.
	StaleIfError caddy.Duration `json:"stale_if_error,omitempty"`

	// DialTimeout bounds connecting to the upstream and its token
	// service: the TCP connection, then the TLS handshake. Default: 10s.
	DialTimeout caddy.Duration `json:"dial_timeout,omitempty"`

	// ResponseHeaderTimeout bounds the wait for the upstream's answer:
	// the response headers of every request, and the whole of a manifest,
	// tag list or referrers exchange, retries included. Past it the
	// client gets 504 (or the cached tag, within stale_if_error).
	// Default: 20s.
	ResponseHeaderTimeout caddy.Duration `json:"response_header_timeout,omitempty"`

	// StallTimeout abandons a blob transfer from the upstream that sends
	// no byte for this long; the client gets 504, or a broken transfer
	// when the blob was already streaming. Default: 60s.
	StallTimeout caddy.Duration `json:"stall_timeout,omitempty"`

	// MaxBlobSize: a blob larger than this is not fetched from the
	// upstream; the client gets 413 SIZE_INVALID and nothing is stored.
	// Upstream's declared size is checked before a byte is stored; a
	// transfer of undeclared size is cut off when it passes the limit.
	// In bytes; the Caddyfile takes sizes such as 10GiB. Default: no
	// limit, except that with mirror_cache_size set a blob larger than
	// the cache is never fetched (an explicit value is capped by it too).
	MaxBlobSize int64 `json:"max_blob_size,omitempty"`

	// MaxConcurrentFills caps the blob transfers from the upstream that
	// run at once (each goes on when its client leaves, for others to
	// share). A pull that needs one more waits up to 5s for a slot, then
	// gets 429 TOOMANYREQUESTS with Retry-After; pulls of a blob already
	// on its way join it without a slot. Default: 64.
	MaxConcurrentFills int `json:"max_concurrent_fills,omitempty"`

	// NotFoundTTL is how long the upstream's "not found" for a manifest
	// (by tag or digest) or a blob is remembered: within it the same
	// request is answered 404 from memory, the upstream not asked. A tag
	// pushed upstream right after a pull missed it appears after at most
	// this long. At most 10,000 answers per mirror are remembered (the
	// oldest go first). Default: 30s; -1 (Caddyfile: off): not remembered.
	NotFoundTTL caddy.Duration `json:"not_found_ttl,omitempty"`

	// MaxMissesPerClient is how many requests for content the mirror does
	// not hold one client may send to the upstream per minute (the budget
	// refills evenly over the minute; a name asked for again within 30s
	// is not counted again). A client is the signed-in user, else its
	// address as Caddy determines it behind trusted_proxies (an IPv6
	// client by its /64), as max_uploads_per_client counts them. Past it
	// the client gets 429 TOOMANYREQUESTS with Retry-After and the
	// upstream is not asked; content the mirror holds is still served to
	// it. Default: 1000; -1 (Caddyfile: off): no bound.
	MaxMissesPerClient int `json:"max_misses_per_client,omitempty"`

	// CAFile is a PEM bundle trusted for the upstream's TLS certificate,
	// in addition to the system roots.
	CAFile string `json:"ca_file,omitempty"`

	// InsecureSkipVerify turns off TLS verification of the upstream. For
	// tests on loopback only.
	InsecureSkipVerify bool `json:"insecure_skip_verify,omitempty"`

	// Aliases are other names of the upstream that clients send in `?ns=`
	// or as a `/<alias>/v2/` path prefix. docker.io adds
	// registry-1.docker.io and index.docker.io itself.
	Aliases []string `json:"aliases,omitempty"`

	// Hosts are request host names whose un-prefixed names belong to this
	// mirror (`docker.mirror.example/v2/debian/...`).
	Hosts []string `json:"hosts,omitempty"`

	// Default makes un-prefixed names on any other host belong to this
	// mirror, as Docker's `registry-mirrors` setting needs. At most one
	// mirror is the default; names under local_prefixes stay local.
	Default bool `json:"default,omitempty"`

	// LibraryPrefix is put before one-component names ("debian" ->
	// "library/debian"). Default: "library" for docker.io, none otherwise.
	LibraryPrefix string `json:"library_prefix,omitempty"`

	// UpstreamPrefix is put before every name upstream, not only
	// one-component ones: with prefix v and upstream_prefix
	// vendor/tools, v/a/b pulls upstream's vendor/tools/a/b, and
	// upstream names outside vendor/tools/ have no name here (zot's sync
	// content prefix with stripPrefix). Excludes library_prefix, and
	// docker.io's default one.
	UpstreamPrefix string `json:"upstream_prefix,omitempty"`

	// Repositories, if set, are the upstream repositories served, as
	// patterns (team/**, library/*); any other name under the prefix
	// answers 404 and the upstream is never asked for it, so the
	// mirror's credentials reach only these. Default: all of them.
	Repositories []string `json:"repositories,omitempty"`

	// Prefetch: when a client GETs an image manifest the mirror had to
	// fetch from upstream, the mirror starts fetching its config and
	// layers at once (eight at a time per image, within half of
	// max_concurrent_fills), so the client's blob requests find them on
	// their way. Off by default: a client that only inspects a manifest
	// then makes the mirror fetch the whole image.
	Prefetch bool `json:"prefetch,omitempty"`
}

// checkSyncServed refuses a sync content that names a repository the
// mirror does not serve (repositories): the sync keeps to them as pulls
// do, so it would fail in every run. A glob lists only served ones.
func checkSyncServed(where string, s *Sync, m *registry.Mirror) error {
	if s == nil {
		return nil
	}
	for _, c := range s.Content {
		if !mirrorsync.IsGlob(c.Repository) && !m.ServesUpstream(c.Repository) {
			return fmt.Errorf("%s: content %s is not among the mirror's repositories", where, c.Repository)
		}
	}
	return nil
}

// buildMirrors turns the config into registry mirrors, replacing
// placeholders in credentials. Nothing is contacted.
// buildMirrors turns the configured mirrors into registry mirrors; log
// gets each upstream client's messages, named after the mirror's prefix.
//
// cacheSize is the handler's mirror_cache_size (0: none), which caps
// every mirror's blob size: a larger blob could never stay cached.
func buildMirrors(ms []*Mirror, local []string, cacheSize int64, repl *caddy.Replacer, log *zap.Logger) ([]*registry.Mirror, error) {
	out := make([]*registry.Mirror, 0, len(ms))
	spaces := make([]authscope.Namespace, 0, len(ms))
	for _, m := range ms {
		where := "mirror " + m.Prefix
		if m.MaxRetries != nil && *m.MaxRetries < 0 {
			return nil, fmt.Errorf("%s: max_retries must not be negative", where)
		}
		if m.RetryDelay < 0 {
			return nil, fmt.Errorf("%s: retry_delay must not be negative", where)
		}
		// Zero is the default; a negative value was taken silently as the
		// default too (stale_if_error's as none), where the Caddyfile
		// refuses it.
		for _, d := range []struct {
			name string
			d    caddy.Duration
		}{{"tag_ttl", m.TagTTL}, {"stale_if_error", m.StaleIfError}, {"dial_timeout", m.DialTimeout},
			{"response_header_timeout", m.ResponseHeaderTimeout}, {"stall_timeout", m.StallTimeout}} {
			if d.d < 0 {
				return nil, fmt.Errorf("%s: %s must be a positive duration (or left out for the default): %s", where, d.name, time.Duration(d.d))
			}
		}
		if m.NotFoundTTL < 0 && m.NotFoundTTL != -1 {
			return nil, fmt.Errorf("%s: not_found_ttl must be a positive duration, or -1 (off)", where)
		}
		if m.MaxMissesPerClient < -1 {
			return nil, fmt.Errorf("%s: max_misses_per_client must be a positive number, or -1 (off)", where)
		}
		upstreams := m.Upstreams
		if len(upstreams) == 0 {
			upstreams = []string{registry.DefaultUpstream(m.Prefix)}
		}
		hosts := append(credentialHosts(upstreams, m.Prefix), m.Aliases...)
		if m.Prefix == "docker.io" {
			hosts = append(hosts, "index.docker.io", "registry-1.docker.io")
		}
		user, pass, err := credentials(where, m.Username, m.Password, m.CredentialsFile, hosts, repl)
		if err != nil {
			return nil, err
		}
		if m.Sync != nil {
			if err := checkSync(where+": sync", m.Sync); err != nil {
				return nil, err
			}
		}
		rm, err := registry.NewMirror(registry.MirrorConfig{
			Prefix:             m.Prefix,
			Upstreams:          m.Upstreams,
			Username:           user,
			Password:           pass,
			MaxRetries:         maxRetries(m.MaxRetries),
			RetryDelay:         time.Duration(m.RetryDelay),
			TagTTL:             time.Duration(m.TagTTL),
			StaleIfError:       time.Duration(m.StaleIfError),
			DialTimeout:        time.Duration(m.DialTimeout),
			MaxBlobSize:        mirrorBlobLimit(m.MaxBlobSize, cacheSize),
			MaxConcurrentFills: m.MaxConcurrentFills,
			NotFoundTTL:        time.Duration(m.NotFoundTTL),
			MaxMissesPerClient: m.MaxMissesPerClient,
			UpstreamTimeout:    time.Duration(m.ResponseHeaderTimeout),
			BlobIdleTimeout:    time.Duration(m.StallTimeout),
			CAFile:             m.CAFile,
			InsecureSkipVerify: m.InsecureSkipVerify,
			Aliases:            m.Aliases,
			Hosts:              m.Hosts,
			Default:            m.Default,
			LibraryPrefix:      m.LibraryPrefix,
			UpstreamPrefix:     m.UpstreamPrefix,
			Repositories:       m.Repositories,
			Prefetch:           m.Prefetch,
			Logger:             log.Named("upstream").With(zap.String("mirror", m.Prefix)),
		})
		if err != nil {
			return nil, err
		}
		if err := checkSyncServed(where+": sync", m.Sync, rm); err != nil {
			return nil, err
		}
		out = append(out, rm)
		spaces = append(spaces, rm.Namespace())
	}
	if _, err := authscope.NewNames(spaces, local); err != nil {
		return nil, err
	}
	return out, nil
}

// mirrorBlobLimit is the smaller of a mirror's max_blob_size and the
// mirror cache's size, where set (0: no limit).
func mirrorBlobLimit(maxBlob, cacheSize int64) int64 {
	switch {
	case maxBlob <= 0:
		return max(cacheSize, 0)
	case cacheSize <= 0:
		return maxBlob
	default:
		return min(maxBlob, cacheSize)
	}
}

// unmarshalMirror parses
//
//	mirror <prefix> {
//		upstream <url>...
//		username <user>
//		password <password>
//		tag_ttl <duration>
//		stale_if_error <duration>
//		dial_timeout <duration>
//		response_header_timeout <duration>
//		stall_timeout <duration>
//		max_blob_size <size>          # e.g. 10GiB
//		max_concurrent_fills <n>
//		not_found_ttl <duration>|off
//		max_misses_per_client <n>|off
//		ca_file <file>
//		insecure_skip_verify
//		alias <name>...
//		host <host>...
//		default
//		library_prefix <name>
//		upstream_prefix <name>
//		credentials_file <config.json>
//		max_retries <n>
//		retry_delay <duration>
//		sync { ... }                  # see unmarshalSync
//	}
func unmarshalMirror(d *caddyfile.Dispenser) (*Mirror, error) {
	m := &Mirror{}
	if !d.NextArg() {
		return nil, d.Err("mirror needs a prefix, e.g. mirror docker.io")
	}
	m.Prefix = d.Val()
	if d.NextArg() {
		return nil, d.Errf("mirror takes one prefix, then a block; got %q", d.Val())
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		args := d.RemainingArgs()
		one := func() (string, error) {
			if len(args) != 1 {
				return "", d.Errf("mirror %s: %s needs exactly one argument", m.Prefix, sub)
			}
			return args[0], nil
		}
		var err error
		if sub == "sync" {
			if m.Sync != nil {
				return nil, d.Errf("mirror %s: sync given twice", m.Prefix)
			}
			if m.Sync, err = unmarshalSync(d, "mirror "+m.Prefix, args); err != nil {
				return nil, err
			}
			continue
		}
		if sub == "credentials_file" || sub == "max_retries" || sub == "retry_delay" {
			if _, err := unmarshalUpstreamSub(d, "mirror "+m.Prefix, &upstreamFields{
				credentialsFile: &m.CredentialsFile, maxRetries: &m.MaxRetries, retryDelay: &m.RetryDelay,
			}, sub, args); err != nil {
				return nil, err
			}
			continue
		}
		switch sub {
		case "upstream":
			if len(args) == 0 {
				return nil, d.Errf("mirror %s: upstream needs at least one URL", m.Prefix)
			}
			for _, u := range args {
				if err := upstream.CheckURL(u); err != nil {
					return nil, d.Errf("mirror %s: %v", m.Prefix, err)
				}
			}
			m.Upstreams = append(m.Upstreams, args...)
		case "alias":
			m.Aliases = append(m.Aliases, args...)
		case "host":
			m.Hosts = append(m.Hosts, args...)
		case "username":
			m.Username, err = one()
		case "password":
			m.Password, err = one()
		case "ca_file":
			m.CAFile, err = one()
		case "library_prefix":
			m.LibraryPrefix, err = one()
		case "upstream_prefix":
			m.UpstreamPrefix, err = one()
		case "repositories":
			if len(args) == 0 {
				return nil, d.Errf("mirror %s: repositories needs at least one pattern", m.Prefix)
			}
			m.Repositories = append(m.Repositories, args...)
		case "tag_ttl", "stale_if_error", "dial_timeout", "response_header_timeout", "stall_timeout":
			var s string
			if s, err = one(); err == nil {
				var dur time.Duration
				if dur, err = caddy.ParseDuration(s); err != nil || dur <= 0 {
					return nil, d.Errf("mirror %s: %s must be a positive duration, got %q", m.Prefix, sub, s)
				}
				switch sub {
				case "tag_ttl":
					m.TagTTL = caddy.Duration(dur)
				case "stale_if_error":
					m.StaleIfError = caddy.Duration(dur)
				case "dial_timeout":
					m.DialTimeout = caddy.Duration(dur)
				case "response_header_timeout":
					m.ResponseHeaderTimeout = caddy.Duration(dur)
				default:
					m.StallTimeout = caddy.Duration(dur)
				}
			}
		case "max_blob_size":
			var s string
			if s, err = one(); err == nil {
				size, perr := humanize.ParseBytes(s)
				if perr != nil || size == 0 || size > 1<<62 {
					return nil, d.Errf("mirror %s: max_blob_size must be a positive size such as 10GiB, got %q", m.Prefix, s)
				}
				m.MaxBlobSize = int64(size)
			}
		case "max_concurrent_fills":
			var s string
			if s, err = one(); err == nil {
				n, perr := strconv.Atoi(s)
				if perr != nil || n <= 0 {
					return nil, d.Errf("mirror %s: max_concurrent_fills must be a positive number, got %q", m.Prefix, s)
				}
				m.MaxConcurrentFills = n
			}
		case "not_found_ttl":
			var s string
			if s, err = one(); err == nil {
				m.NotFoundTTL = -1
				if s != "off" {
					dur, perr := caddy.ParseDuration(s)
					if perr != nil || dur <= 0 {
						return nil, d.Errf("mirror %s: not_found_ttl must be a positive duration or off, got %q", m.Prefix, s)
					}
					m.NotFoundTTL = caddy.Duration(dur)
				}
			}
		case "max_misses_per_client":
			var s string
			if s, err = one(); err == nil {
				m.MaxMissesPerClient = -1
				if s != "off" {
					n, perr := strconv.Atoi(s)
					if perr != nil || n <= 0 {
						return nil, d.Errf("mirror %s: max_misses_per_client must be a positive number or off, got %q", m.Prefix, s)
					}
					m.MaxMissesPerClient = n
				}
			}
		case "insecure_skip_verify", "default", "prefetch":
			if len(args) != 0 {
				return nil, d.Errf("mirror %s: %s takes no argument", m.Prefix, sub)
			}
			switch sub {
			case "default":
				m.Default = true
			case "prefetch":
				m.Prefetch = true
			default:
				m.InsecureSkipVerify = true
			}
		default:
			return nil, d.Errf("mirror %s: unrecognized subdirective %q", m.Prefix, sub)
		}
		if err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *Mirror) String() string { return fmt.Sprintf("mirror %s", m.Prefix) }

// namespace is how the name mapping sees m, with the defaults a
// well-known upstream gets (as registry.NewMirror gives them).
func (m *Mirror) namespace() authscope.Namespace {
	ns := authscope.Namespace{Prefix: m.Prefix, Aliases: m.Aliases, Hosts: m.Hosts, Default: m.Default, LibraryPrefix: m.LibraryPrefix}.WithDefaults()
	if m.UpstreamPrefix != "" {
		ns.LibraryPrefix = "" // as registry.NewMirror: upstream_prefix instead
	}
	return ns
}

// setMirrorCache gives the store the limit of mirrored content and tells
// it which repositories are mirrors'. The store may be shared (see
// Storage): the handler built last sets it, as a reload would.
func (rg *Registry) setMirrorCache(st interface{ SetMirrorCache(cache.MirrorCache) }, h *registry.Handler, obs cache.MirrorCacheObserver) {
	if len(rg.mirrors) == 0 {
		st.SetMirrorCache(cache.MirrorCache{}) // nothing mirrored, nothing to count
		return
	}
	st.SetMirrorCache(cache.MirrorCache{
		Mirrored: h.Mirrored,
		MaxBytes: rg.MirrorCacheSize,
		Observer: obs,
	})
}

// The metrics observer counts what the mirror's miss bounds answer; the
// interface is optional, so a mismatch would silently count nothing.
var _ registry.MissObserver = (*metricsObserver)(nil)
