package caddymodule

import (
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("oci_registry", parseCaddyfile)
	// Before encode: after the auth directives (basic_auth, forward_auth)
	// and request rewriting, so those apply to the registry; ahead of
	// encode, so compression never wraps blobs and manifests (their bytes,
	// Content-Length and Range must stay exact); and ahead of handle, route,
	// reverse_proxy and file_server, so /v2/ is served whatever catch-all
	// follows while other paths fall through to it.
	httpcaddyfile.RegisterDirectiveOrder("oci_registry", httpcaddyfile.Before, "encode")
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
//		max_manifest_size <size>      # e.g. 4MiB, 10MB, 4194304
//		mirror_cache_size <size>      # e.g. 50GiB; 0: no limit
//		upload_ttl        <duration>
//		gc_interval       <duration>|off
//		gc_grace          <duration>
//		local             <prefix>...
//		mirror <prefix> { ... }      # see unmarshalMirror
//		auth { ... }                 # see unmarshalAuth
//	}
func (rg *Registry) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.Errf("oci_registry takes no arguments, only a block; got %q", d.Val())
	}
	for d.NextBlock(0) {
		sub := d.Val()
		switch sub {
		case "storage", "max_manifest_size", "mirror_cache_size", "upload_ttl", "gc_interval", "gc_grace":
		case "auth":
			a, err := unmarshalAuth(d)
			if err != nil {
				return err
			}
			rg.Auth = a
			continue
		case "mirror":
			m, err := unmarshalMirror(d)
			if err != nil {
				return err
			}
			rg.Mirrors = append(rg.Mirrors, m)
			continue
		case "local":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Err("local needs at least one name prefix")
			}
			rg.LocalPrefixes = append(rg.LocalPrefixes, args...)
			continue
		default:
			return d.Errf("unrecognized oci_registry subdirective %q (known: storage, max_manifest_size, mirror_cache_size, upload_ttl, gc_interval, gc_grace, mirror, local)", sub)
		}
		var arg string
		if !d.AllArgs(&arg) {
			return d.Errf("%s needs exactly one argument", sub)
		}
		switch sub {
		case "storage":
			rg.Storage = arg
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
		case "upload_ttl", "gc_grace", "gc_interval":
			var dur time.Duration
			if sub == "gc_interval" && arg == "off" {
				dur = -1
			} else {
				var err error
				dur, err = caddy.ParseDuration(arg)
				if err != nil {
					return d.Errf("parsing %s %q: %v", sub, arg, err)
				}
				if dur <= 0 {
					return d.Errf("%s must be positive, got %q", sub, arg)
				}
			}
			switch sub {
			case "upload_ttl":
				rg.UploadTTL = caddy.Duration(dur)
			case "gc_grace":
				rg.GCGrace = caddy.Duration(dur)
			default:
				rg.GCInterval = caddy.Duration(dur)
			}
		}
	}
	return nil
}
