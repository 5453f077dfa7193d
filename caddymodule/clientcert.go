package caddymodule

// Config of client certificates as an identity source of oci_registry's
// auth; authscope.ClientCertMapping decides.

import (
	"errors"
	"fmt"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-oci/caddy-oci/authscope"
)

// ClientCertificates makes a TLS client certificate that Caddy verified
// the identity of a request that sends no credentials. Verification is
// Caddy's: the site's `tls { client_auth { mode verify_if_given (or
// require_and_verify); trust_pool file <ca.pem> } }`. A certificate Caddy
// only received (modes request and require) names nobody, nor does any
// header: behind a proxy that terminates TLS this source sees nothing.
// Credentials in an Authorization header take precedence over the
// certificate.
type ClientCertificates struct {
	// User is where the user name comes from: "cn" (the subject's common
	// name), "email", "dns" or "uri" (the certificate's one SAN of that
	// kind). Default: "cn". A certificate with none, or with several, of
	// it is refused with 401, as is a name that is empty, has control
	// or invisible characters, spaces around it, or starts with
	// "workload:".
	User string `json:"user,omitempty"`

	// Groups are subject attributes whose values are the user's groups:
	// "ou" (organizational unit) and "o" (organization). Every value
	// counts: a certificate with two OUs is in both groups. Policies
	// match them like config groups and may name groups only
	// certificates carry.
	Groups []string `json:"groups,omitempty"`
}

func (c *ClientCertificates) mapping() authscope.ClientCertMapping {
	return authscope.ClientCertMapping{User: c.User, Groups: c.Groups}
}

// unmarshalClientCertificates parses:
//
//	client_certificates {
//		user   cn|email|dns|uri
//		groups ou|o...
//	}
func unmarshalClientCertificates(d *caddyfile.Dispenser) (*ClientCertificates, error) {
	c := &ClientCertificates{}
	err := eachSubdirective(d, func(sub string, args []string) error {
		var err error
		switch sub {
		case "user":
			c.User, err = oneArg(d, sub, args)
		case "groups":
			if len(args) == 0 {
				return d.Err("groups needs at least one attribute: ou, o")
			}
			c.Groups = append(c.Groups, args...)
		default:
			return d.Errf("unrecognized client_certificates subdirective %q (known: user, groups)", sub)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := c.mapping().Check(); err != nil {
		return nil, d.Errf("client_certificates %v", err)
	}
	return c, nil
}

// validate checks the mapping, and that there are rules for the
// identities it makes to matter.
func (c *ClientCertificates) validate(a *Auth) error {
	if err := c.mapping().Check(); err != nil {
		return fmt.Errorf("client_certificates %w", err)
	}
	if len(a.Repositories) == 0 && a.Admin == nil {
		return errors.New("client_certificates needs access rules or admin: without them a certificate's user may do nothing")
	}
	return nil
}
