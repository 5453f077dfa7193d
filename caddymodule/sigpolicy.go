package caddymodule

import (
	"fmt"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-oci/caddy-oci/registry/sigpolicy"
)

// SignaturePolicy requires a valid signature before a manifest of the
// repositories it matches is served, whether local or mirrored: every
// manifest GET and HEAD, by tag or by digest, under any name a client
// uses for the repository. An unsigned or badly signed image is refused
// with 403 DENIED naming the policy (Match).
type SignaturePolicy struct {
	// Match is a pattern over internal names (`docker.io/myorg/**`,
	// `team/*`): `*` is one path component, `**` any number. The first
	// policy that matches a repository applies.
	Match string `json:"match"`
	// CosignKeys are PEM public key files (cosign.pub). A cosign
	// signature — under cosign's tag `sha256-<hex>.sig` or as an OCI 1.1
	// referrer — made with one of them passes, if its payload names the
	// pulled manifest's digest.
	CosignKeys []string `json:"cosign_keys,omitempty"`
	// NotationCerts are PEM certificate files (a CA's or the signer's).
	// A notation signature (JWS or COSE, as a referrer) whose chain
	// contains one of them passes notation's strict verification.
	// Revocation endpoints are asked only on loopback.
	NotationCerts []string `json:"notation_certs,omitempty"`
	// PerPlatform lets an index through unsigned; each platform manifest
	// must then be signed itself. Without it the index must be signed
	// (cosign's default), and a signed index lets its platform
	// manifests through.
	PerPlatform bool `json:"per_platform,omitempty"`
}

// buildSignaturePolicies loads the key and certificate files: a file
// that cannot be read or parsed is a config error at load.
func buildSignaturePolicies(cfgs []*SignaturePolicy) ([]*sigpolicy.Policy, error) {
	var out []*sigpolicy.Policy
	for _, c := range cfgs {
		if c == nil {
			continue
		}
		p, err := sigpolicy.New(sigpolicy.Config{
			Match: c.Match, CosignKeys: c.CosignKeys, NotationCerts: c.NotationCerts, PerPlatform: c.PerPlatform,
		})
		if err != nil {
			return nil, fmt.Errorf("require_signature %s: %w", c.Match, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// unmarshalRequireSignature parses
//
//	require_signature <pattern> {
//		cosign_key    <file>...
//		notation_cert <file>...
//		per_platform
//	}
func unmarshalRequireSignature(d *caddyfile.Dispenser) (*SignaturePolicy, error) {
	args := d.RemainingArgs()
	if len(args) != 1 {
		return nil, d.Err("require_signature needs exactly one repository pattern, then a block")
	}
	p := &SignaturePolicy{Match: args[0]}
	where := "require_signature " + p.Match
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		sargs := d.RemainingArgs()
		switch sub {
		case "cosign_key":
			if len(sargs) == 0 {
				return nil, d.Errf("%s: cosign_key needs at least one file", where)
			}
			p.CosignKeys = append(p.CosignKeys, sargs...)
		case "notation_cert":
			if len(sargs) == 0 {
				return nil, d.Errf("%s: notation_cert needs at least one file", where)
			}
			p.NotationCerts = append(p.NotationCerts, sargs...)
		case "per_platform":
			if len(sargs) != 0 {
				return nil, d.Errf("%s: per_platform takes no argument", where)
			}
			p.PerPlatform = true
		case "fulcio_root", "rekor_key", "rekor_url", "certificate_identity", "certificate_oidc_issuer", "keyless":
			// cosign verify's keyless flags: say plainly why not, rather
			// than "unrecognized".
			return nil, d.Errf("%s: %s: %v", where, sub, sigpolicy.ErrKeyless)
		default:
			return nil, d.Errf("%s: unrecognized subdirective %q (known: cosign_key, notation_cert, per_platform)", where, sub)
		}
	}
	if len(p.CosignKeys) == 0 && len(p.NotationCerts) == 0 {
		return nil, d.Errf("%s: needs a block with at least one cosign_key or notation_cert", where)
	}
	return p, nil
}
