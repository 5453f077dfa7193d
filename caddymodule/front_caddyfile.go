package caddymodule

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("oci_front", parseFrontCaddyfile)
	// Before reverse_proxy, which it rewrites requests for and answers
	// from — and, like oci_registry, before encode, so compression never
	// wraps blobs whose bytes, Content-Length and Range must stay exact,
	// and before handle and route, so /v2/ and /_oci/token are served
	// whatever blocks follow.
	httpcaddyfile.RegisterDirectiveOrder("oci_front", httpcaddyfile.Before, "encode")
}

func parseFrontCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	f := new(Front)
	if err := f.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return f, nil
}

// UnmarshalCaddyfile sets up the front from Caddyfile tokens:
//
//	oci_front [<matcher>] {
//		mirror <prefix> {
//			alias          <name>...
//			host           <host>...
//			default
//			library_prefix <name>
//		}
//		local <prefix>...
//		token {
//			realm        <url of the backend's token service>
//			service      <name>
//			proxy
//			proxy_scheme http|https
//			login_limit off | { per_client <n>|off  per_account <n>|off  window <duration> }
//		}
//	}
func (f *Front) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.Errf("oci_front takes no arguments, only a block; got %q", d.Val())
	}
	var mirrorsAt []position
	localAt := map[string]position{}
	for d.NextBlock(0) {
		switch sub := d.Val(); sub {
		case "mirror":
			at := positionOf(d)
			m, err := unmarshalFrontMirror(d)
			if err != nil {
				return err
			}
			f.Mirrors = append(f.Mirrors, m)
			mirrorsAt = append(mirrorsAt, at)
		case "local":
			at := positionOf(d)
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Err("local needs at least one name prefix")
			}
			for _, l := range args {
				localAt[l] = at
			}
			f.LocalPrefixes = append(f.LocalPrefixes, args...)
		case "token":
			t, err := unmarshalFrontToken(d)
			if err != nil {
				return err
			}
			f.Token = t
		default:
			return d.Errf("unrecognized oci_front subdirective %q (known: mirror, local, token)", sub)
		}
	}
	// The checks Validate runs, at the lines.
	cfg, err := f.config()
	if err != nil {
		return d.WrapErr(err)
	}
	return checkNamespaces(cfg.Namespaces, mirrorsAt, f.LocalPrefixes, localAt)
}

func unmarshalFrontMirror(d *caddyfile.Dispenser) (*FrontMirror, error) {
	m := &FrontMirror{}
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
		switch sub {
		case "alias", "host":
			if len(args) == 0 {
				return nil, d.Errf("mirror %s: %s needs at least one name", m.Prefix, sub)
			}
			if sub == "alias" {
				m.Aliases = append(m.Aliases, args...)
			} else {
				m.Hosts = append(m.Hosts, args...)
			}
		case "default":
			if len(args) != 0 {
				return nil, d.Errf("mirror %s: default takes no argument", m.Prefix)
			}
			m.Default = true
		case "library_prefix":
			if len(args) != 1 {
				return nil, d.Errf("mirror %s: library_prefix needs exactly one argument", m.Prefix)
			}
			m.LibraryPrefix = args[0]
		default:
			return nil, d.Errf("mirror %s: unrecognized subdirective %q (known in oci_front: alias, host, default, library_prefix)", m.Prefix, sub)
		}
	}
	return m, nil
}

func unmarshalFrontToken(d *caddyfile.Dispenser) (*FrontToken, error) {
	t := &FrontToken{}
	err := eachSubdirective(d, func(sub string, args []string) error {
		var err error
		switch sub {
		case "realm":
			t.Realm, err = oneArg(d, sub, args)
		case "service":
			t.Service, err = oneArg(d, sub, args)
		case "proxy":
			if len(args) != 0 {
				return d.ArgErr()
			}
			t.Proxy = true
		case "proxy_scheme":
			t.ProxyScheme, err = proxySchemeArg(d, args)
		case "login_limit":
			t.LoginLimit, err = unmarshalLoginLimit(d, args)
		default:
			return d.Errf("unrecognized token subdirective %q in oci_front (known: realm, service, proxy, proxy_scheme, login_limit)", sub)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}
