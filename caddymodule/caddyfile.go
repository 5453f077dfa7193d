package caddymodule

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"

	"github.com/caddy-oci/caddy-oci/authscope"
)

func init() {
	// As RegisterHandlerDirective, and at a site's top level the server's
	// listener keeps file descriptors free for the registry
	// (fdreserve.go); a route or handle block takes only handlers.
	httpcaddyfile.RegisterDirective("oci_registry", func(h httpcaddyfile.Helper) ([]httpcaddyfile.ConfigValue, error) {
		top := siteTopLevel(h)
		if !h.Next() {
			return nil, h.ArgErr()
		}
		matcherSet, err := h.ExtractMatcherSet()
		if err != nil {
			return nil, err
		}
		handler, err := parseCaddyfile(h)
		if err != nil {
			return nil, err
		}
		vals := h.NewRoute(matcherSet, handler)
		if top {
			vals = append(vals, httpcaddyfile.ConfigValue{Class: "listener_wrapper", Value: &FDReserve{}})
		}
		return vals, nil
	})
	// Before encode: after the auth directives (basic_auth, forward_auth)
	// and request rewriting, so those apply to the registry; ahead of
	// encode, so compression never wraps blobs and manifests (their bytes,
	// Content-Length and Range must stay exact); and ahead of handle, route,
	// reverse_proxy and file_server, so /v2/ is served whatever catch-all
	// follows while other paths fall through to it.
	httpcaddyfile.RegisterDirectiveOrder("oci_registry", httpcaddyfile.Before, "encode")
}

// siteTopLevel reports whether h is a directive's at a site's top level:
// there the adapter passes one map as both State and BlockState, where a
// nested block (route, handle) has a BlockState of its own.
func siteTopLevel(h httpcaddyfile.Helper) bool {
	if h.State == nil || h.BlockState == nil {
		return false
	}
	const probe = "oci_registry.top_level_probe"
	h.BlockState[probe] = true
	_, same := h.State[probe]
	delete(h.BlockState, probe)
	return same
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	rg := new(Registry)
	if err := rg.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return rg, nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	oci_registry [<matcher>] {
//		storage           <dir>
//		storage_reserve   <size>|<percent>% [<size>|<percent>%] | off
//		metadata_dir      <dir>
//		storage s3 { ... }            # instead of a folder: see unmarshalS3
//		metadata postgres <dsn>       # with storage s3: replicas share it
//		max_manifest_size <size>      # e.g. 4MiB, 10MB, 4194304
//		sparse_manifests              # accept manifests whose blobs are not all here
//		mirror_cache_size <size>      # e.g. 50GiB; 0: no limit
//		upload_ttl        <duration>
//		upload_idle_timeout        <duration>|off
//		max_uploads_per_client     <n>|off
//		max_uploads_per_repository <n>|off
//		max_blob_size              <size>|off   # e.g. 20GiB
//		max_upload_bytes           <size>|off   # e.g. 100GiB
//		max_upload_bytes_per_client <size>|off  # e.g. 25GiB
//		gc_interval       <duration>|off
//		gc_grace          <duration>
//		gc_full_interval  <duration>
//		scrub_interval    <duration>|off
//		scrub_rate        <size>      # per second, e.g. 100MiB
//		local             <prefix>...
//		read_only
//		mirror <prefix> { ... }      # see unmarshalMirror
//		sync_into <prefix> from <url> { ... }  # see unmarshalSyncInto
//		require_signature <pattern> { ... }    # see unmarshalRequireSignature
//		auth { ... }                 # see unmarshalAuth
//	}
func (rg *Registry) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.Errf("oci_registry takes no arguments, only a block; got %q", d.Val())
	}
	// Where each mirror and local prefix was written, for the checks of
	// the whole block below.
	var mirrorsAt []position
	localAt := map[string]position{}
	for d.NextBlock(0) {
		sub := d.Val()
		switch sub {
		case "metadata_dir", "max_manifest_size", "mirror_cache_size", "upload_ttl", "gc_interval", "gc_grace", "gc_full_interval", "scrub_interval", "scrub_rate":
		case "upload_idle_timeout", "max_uploads_per_client", "max_uploads_per_repository", "max_blob_size", "max_upload_bytes", "max_upload_bytes_per_client":
			if err := rg.unmarshalUploadLimit(d, sub); err != nil {
				return err
			}
			continue
		case "storage":
			args := d.RemainingArgs()
			if len(args) == 1 && args[0] == "s3" && opensBlock(d) {
				cfg, err := unmarshalS3(d)
				if err != nil {
					return err
				}
				rg.StorageS3 = cfg
				continue
			}
			if len(args) != 1 {
				return d.Err("storage needs exactly one argument: a folder, or `s3` and a block")
			}
			rg.Storage = args[0]
			if err := rg.unmarshalStorageBlock(d); err != nil {
				return err
			}
			continue
		case "metadata":
			if err := rg.unmarshalMetadata(d); err != nil {
				return err
			}
			continue
		case "storage_reserve":
			if err := rg.unmarshalReserve(d, d.RemainingArgs()); err != nil {
				return err
			}
			continue
		case "auth":
			a, err := unmarshalAuth(d)
			if err != nil {
				return err
			}
			rg.Auth = a
			continue
		case "mirror":
			at := positionOf(d)
			m, err := unmarshalMirror(d)
			if err != nil {
				return err
			}
			rg.Mirrors = append(rg.Mirrors, m)
			mirrorsAt = append(mirrorsAt, at)
			continue
		case "read_only":
			if d.NextArg() {
				return d.Errf("read_only takes no arguments; got %q", d.Val())
			}
			rg.ReadOnly = true
			continue
		case "sparse_manifests":
			if d.NextArg() {
				return d.Errf("sparse_manifests takes no argument, got %q", d.Val())
			}
			rg.SparseManifests = true
			continue
		case "require_signature":
			p, err := unmarshalRequireSignature(d)
			if err != nil {
				return err
			}
			rg.RequireSignature = append(rg.RequireSignature, p)
			continue
		case "sync_into":
			si, err := unmarshalSyncInto(d)
			if err != nil {
				return err
			}
			rg.SyncInto = append(rg.SyncInto, si)
			continue
		case "sub_storage":
			if err := rg.unmarshalSubStorage(d); err != nil {
				return err
			}
			continue
		case "local":
			at := positionOf(d)
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Err("local needs at least one name prefix")
			}
			for _, l := range args {
				localAt[l] = at
			}
			rg.LocalPrefixes = append(rg.LocalPrefixes, args...)
			continue
		default:
			return d.Errf("unrecognized oci_registry subdirective %q (known: storage, storage_reserve, metadata, metadata_dir, max_manifest_size, sparse_manifests, mirror_cache_size, upload_ttl, upload_idle_timeout, max_uploads_per_client, max_uploads_per_repository, max_blob_size, max_upload_bytes, max_upload_bytes_per_client, gc_interval, gc_grace, gc_full_interval, scrub_interval, scrub_rate, mirror, sync_into, require_signature, sub_storage, local, read_only, auth)", sub)
		}
		var arg string
		if !d.AllArgs(&arg) {
			return d.Errf("%s needs exactly one argument", sub)
		}
		switch sub {
		case "metadata_dir":
			rg.MetadataDir = arg
		case "max_manifest_size":
			size, err := humanize.ParseBytes(arg)
			if err != nil {
				return d.Errf("parsing max_manifest_size %q: %v", arg, err)
			}
			if size == 0 || size > 1<<40 {
				return d.Errf("max_manifest_size %q out of range", arg)
			}
			rg.MaxManifestSize = int64(size)
		case "mirror_cache_size":
			size, err := humanize.ParseBytes(arg)
			if err != nil || size > 1<<62 {
				return d.Errf("parsing mirror_cache_size %q: want a size such as 50GiB", arg)
			}
			rg.MirrorCacheSize = int64(size)
		case "scrub_rate":
			rate, err := parseScrubRate(d, arg)
			if err != nil {
				return err
			}
			rg.ScrubRate = rate
		case "upload_ttl", "gc_grace", "gc_interval", "gc_full_interval", "scrub_interval":
			dur, err := parseStoreDuration(d, sub, arg)
			if err != nil {
				return err
			}
			switch sub {
			case "scrub_interval":
				rg.ScrubInterval = caddy.Duration(dur)
			case "upload_ttl":
				rg.UploadTTL = caddy.Duration(dur)
			case "gc_grace":
				rg.GCGrace = caddy.Duration(dur)
			case "gc_full_interval":
				rg.GCFullInterval = caddy.Duration(dur)
			default:
				rg.GCInterval = caddy.Duration(dur)
			}
		}
	}
	spaces := make([]authscope.Namespace, 0, len(rg.Mirrors))
	for _, m := range rg.Mirrors {
		spaces = append(spaces, m.namespace())
	}
	return checkNamespaces(spaces, mirrorsAt, rg.LocalPrefixes, localAt)
}

// parseStoreDuration parses the value of upload_ttl, gc_grace,
// gc_interval or scrub_interval (which also take off) or
// gc_full_interval.
func parseStoreDuration(d *caddyfile.Dispenser, sub, arg string) (time.Duration, error) {
	if (sub == "gc_interval" || sub == "scrub_interval") && arg == "off" {
		return -1, nil
	}
	dur, err := caddy.ParseDuration(arg)
	if err != nil {
		return 0, d.Errf("parsing %s %q: %v", sub, arg, err)
	}
	if dur <= 0 {
		return 0, d.Errf("%s must be positive, got %q", sub, arg)
	}
	return dur, nil
}

// parseScrubRate parses scrub_rate: a size per second.
func parseScrubRate(d *caddyfile.Dispenser, arg string) (int64, error) {
	n, err := humanize.ParseBytes(arg)
	if err != nil || n < minScrubRate || n > maxScrubRate {
		return 0, d.Errf("scrub_rate %q: want a size per second between 1MiB and 1TiB, such as 100MiB", arg)
	}
	return int64(n), nil
}

// checkNamespaces runs, at parse time, the checks Provision runs on the
// mirrors and local prefixes, so that an error names the line it is on
// (Provision's errors come after a chain of Caddy's module names, with no
// line). A mirror's error is on the mirror that made it (the second
// default, the second use of a name); a local prefix's on its local line.
func checkNamespaces(spaces []authscope.Namespace, mirrorsAt []position, local []string, localAt map[string]position) error {
	for i := range spaces {
		if _, err := authscope.NewNames(spaces[:i+1], nil); err != nil {
			return mirrorsAt[i].wrap(err)
		}
	}
	for _, l := range local {
		if _, err := authscope.NewNames(spaces, []string{l}); err != nil {
			return localAt[l].wrap(err)
		}
	}
	return nil
}

// position is where a Caddyfile token stood, for an error found after the
// dispenser has moved on.
type position struct {
	file string
	line int
}

func positionOf(d *caddyfile.Dispenser) position { return position{d.File(), d.Line()} }

// wrap adds the position as caddyfile.Dispenser.WrapErr does.
func (p position) wrap(err error) error { return fmt.Errorf("%w, at %s:%d", err, p.file, p.line) }

// unmarshalUploadLimit reads one of the upload limits: a count, a size or
// a duration, or "off" for no limit (-1 in JSON).
func (rg *Registry) unmarshalUploadLimit(d *caddyfile.Dispenser, sub string) error {
	args := d.RemainingArgs()
	if len(args) != 1 {
		return d.Errf("%s needs exactly one argument", sub)
	}
	arg := args[0]
	if arg == "off" {
		switch sub {
		case "upload_idle_timeout":
			rg.UploadIdleTimeout = -1
		case "max_uploads_per_client":
			rg.MaxUploadsPerClient = -1
		case "max_uploads_per_repository":
			rg.MaxUploadsPerRepository = -1
		case "max_blob_size":
			rg.MaxBlobSize = -1
		case "max_upload_bytes":
			rg.MaxUploadBytes = -1
		case "max_upload_bytes_per_client":
			rg.MaxUploadBytesPerClient = -1
		}
		return nil
	}
	switch sub {
	case "upload_idle_timeout":
		dur, err := caddy.ParseDuration(arg)
		if err != nil || dur <= 0 {
			return d.Errf("%s %q: want a positive duration or off", sub, arg)
		}
		rg.UploadIdleTimeout = caddy.Duration(dur)
	case "max_uploads_per_client", "max_uploads_per_repository":
		n, err := strconv.Atoi(arg)
		if err != nil || n <= 0 {
			return d.Errf("%s %q: want a positive number or off", sub, arg)
		}
		if sub == "max_uploads_per_client" {
			rg.MaxUploadsPerClient = n
		} else {
			rg.MaxUploadsPerRepository = n
		}
	case "max_blob_size", "max_upload_bytes", "max_upload_bytes_per_client":
		size, err := humanize.ParseBytes(arg)
		if err != nil || size == 0 || size > 1<<62 {
			return d.Errf("%s %q: want a size such as 10GiB, or off", sub, arg)
		}
		switch sub {
		case "max_blob_size":
			rg.MaxBlobSize = int64(size)
		case "max_upload_bytes":
			rg.MaxUploadBytes = int64(size)
		default:
			rg.MaxUploadBytesPerClient = int64(size)
		}
	}
	return nil
}

// unmarshalReserve reads storage_reserve's arguments: off, or a size
// and/or a percentage of the filesystem (the larger applies).
func (rg *Registry) unmarshalReserve(d *caddyfile.Dispenser, args []string) error {
	const usage = "storage_reserve takes a size (256MiB), a percentage (1%%), both, or off"
	if len(args) == 1 && args[0] == "off" {
		rg.StorageReserve, rg.StorageReservePercent = -1, 0
		return nil
	}
	if len(args) == 0 || len(args) > 2 {
		return d.Errf(usage)
	}
	var haveSize, havePercent bool
	for _, a := range args {
		if p, ok := strings.CutSuffix(a, "%"); ok {
			pct, err := strconv.ParseFloat(p, 64)
			if err != nil || havePercent || !(pct > 0 && pct < 100) {
				return d.Errf("storage_reserve %q: want a percentage above 0 and below 100, given once", a)
			}
			rg.StorageReservePercent, havePercent = pct, true
			continue
		}
		size, err := humanize.ParseBytes(a)
		if err != nil || haveSize || size == 0 || size > 1<<62 {
			return d.Errf("storage_reserve %q: want a size above 0 such as 256MiB, given once; "+usage, a)
		}
		rg.StorageReserve, haveSize = int64(size), true
	}
	return nil
}

// The blocks that take no arguments of their own (token in oci_registry's
// auth and in oci_front, oidc, api_keys, workload) share the walk below and
// the same wording for a wrong argument count or a bad duration.

// eachSubdirective refuses arguments on the directive at d's cursor, then
// calls f with each subdirective of its block and the arguments on that
// subdirective's line, stopping at the first error f returns.
func eachSubdirective(d *caddyfile.Dispenser, f func(sub string, args []string) error) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if err := f(sub, d.RemainingArgs()); err != nil {
			return err
		}
	}
	return nil
}

// oneArg returns the argument of sub, which takes exactly one.
func oneArg(d *caddyfile.Dispenser, sub string, args []string) (string, error) {
	if len(args) != 1 {
		return "", d.Errf("%s needs exactly one argument", sub)
	}
	return args[0], nil
}

// durationArg parses v, the argument of sub, as a duration that is not
// negative, in caddy.ParseDuration's syntax (so "1d" is a day).
func durationArg(d *caddyfile.Dispenser, sub, v string) (caddy.Duration, error) {
	dur, err := caddy.ParseDuration(v)
	if err != nil || dur < 0 {
		return 0, d.Errf("%s %q: not a duration", sub, v)
	}
	return caddy.Duration(dur), nil
}

// proxySchemeArg returns the argument of proxy_scheme (in both token
// blocks): http or https.
func proxySchemeArg(d *caddyfile.Dispenser, args []string) (string, error) {
	if len(args) != 1 || (args[0] != "http" && args[0] != "https") {
		return "", d.Err("proxy_scheme takes one argument: http or https")
	}
	return args[0], nil
}
