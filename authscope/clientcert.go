package authscope

// Client certificates as an identity source: when the TLS layer (Caddy's
// client_auth) has verified the certificate a client presented, its
// subject or one of its SANs names the user and chosen subject attributes
// name its groups, which the access policy then judges like any other
// identity's.
//
// Only a verified chain counts (tls.ConnectionState.VerifiedChains): a
// certificate the server merely received (client_auth mode request or
// require, which do not verify) is anybody's, and so is any header a
// client or a proxy in front sets. Behind a proxy that terminates TLS
// there is no client certificate here at all.

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Where a client certificate's user name comes from.
const (
	CertUserCN    = "cn"    // the subject's common name (default)
	CertUserEmail = "email" // the one email address SAN
	CertUserDNS   = "dns"   // the one DNS name SAN
	CertUserURI   = "uri"   // the one URI SAN (a SPIFFE ID, say)
)

// Subject attributes whose values may be groups.
const (
	CertGroupOU = "ou" // organizational unit
	CertGroupO  = "o"  // organization
)

// maxCertName bounds a user or group name taken from a certificate.
const maxCertName = 256

// ClientCertMapping says how a verified client certificate maps to an
// identity.
type ClientCertMapping struct {
	// User is where the user name comes from: CertUserCN (default),
	// CertUserEmail, CertUserDNS or CertUserURI. A SAN must be there
	// exactly once: with two, which one is the user would be a guess.
	User string
	// Groups are the subject attributes (CertGroupOU, CertGroupO) whose
	// values are the user's groups, every value of each.
	Groups []string
}

// ErrClientCert is a verified client certificate that names no usable
// identity.
var ErrClientCert = errors.New("client certificate names no usable identity")

// Check refuses unknown sources.
func (m ClientCertMapping) Check() error {
	switch m.User {
	case "", CertUserCN, CertUserEmail, CertUserDNS, CertUserURI:
	default:
		return fmt.Errorf("user %q: want %s, %s, %s or %s", m.User, CertUserCN, CertUserEmail, CertUserDNS, CertUserURI)
	}
	for _, g := range m.Groups {
		if g != CertGroupOU && g != CertGroupO {
			return fmt.Errorf("groups %q: want %s or %s", g, CertGroupOU, CertGroupO)
		}
	}
	return nil
}

// Identify returns the identity of the client certificate that cs
// verified, or false when cs verified none (no TLS, no certificate, or a
// certificate received without verification). A verified certificate
// whose names are unusable is an error wrapping ErrClientCert.
func (m ClientCertMapping) Identify(cs *tls.ConnectionState) (Identity, bool, error) {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return Identity{}, false, nil
	}
	// The leaf of a verified chain is the certificate the client proved
	// it holds the key of.
	leaf := cs.VerifiedChains[0][0]
	user, err := m.user(leaf)
	if err != nil {
		return Identity{Method: MethodClientCert}, true, fmt.Errorf("%w: %w", ErrClientCert, err)
	}
	var groups []string
	for _, attr := range m.Groups {
		vals := leaf.Subject.OrganizationalUnit
		if attr == CertGroupO {
			vals = leaf.Subject.Organization
		}
		for _, v := range vals {
			if err := checkCertName(v); err != nil {
				return Identity{Method: MethodClientCert}, true, fmt.Errorf("%w: %s %q: %w", ErrClientCert, attr, v, err)
			}
			if !slices.Contains(groups, v) {
				groups = append(groups, v)
			}
		}
	}
	if len(groups) > maxGroups {
		return Identity{Method: MethodClientCert}, true, fmt.Errorf("%w: more than %d groups", ErrClientCert, maxGroups)
	}
	return Identity{User: user, Groups: groups, Method: MethodClientCert}, true, nil
}

// oidCommonName is the subject attribute CN.
var oidCommonName = asn1.ObjectIdentifier{2, 5, 4, 3}

func (m ClientCertMapping) user(leaf *x509.Certificate) (string, error) {
	var name, what string
	var n int
	switch m.User {
	case "", CertUserCN:
		what = "subject CN"
		// pkix.Name keeps the last CN of several: which one names the
		// user would depend on the order a CA wrote them in.
		for _, atv := range leaf.Subject.Names {
			if atv.Type.Equal(oidCommonName) {
				n++
			}
		}
		name = leaf.Subject.CommonName
	case CertUserEmail:
		what, n = "email SAN", len(leaf.EmailAddresses)
		if n == 1 {
			name = leaf.EmailAddresses[0]
		}
	case CertUserDNS:
		what, n = "DNS SAN", len(leaf.DNSNames)
		if n == 1 {
			name = leaf.DNSNames[0]
		}
	case CertUserURI:
		what, n = "URI SAN", len(leaf.URIs)
		if n == 1 {
			name = leaf.URIs[0].String()
		}
	}
	switch {
	case n == 0:
		return "", fmt.Errorf("no %s", what)
	case n > 1:
		return "", fmt.Errorf("%d values of %s, want one", n, what)
	}
	if err := checkCertName(name); err != nil {
		return "", fmt.Errorf("%s %q: %w", what, name, err)
	}
	return name, nil
}

// checkCertName refuses names that would be ambiguous or unsafe as a user
// or group: empty, overlong, invalid UTF-8, with control or invisible
// characters (they end up in logs and audit lines, and an invisible one
// makes a name look like another), with spaces around them (they are
// invisible in a policy), or in the namespace of workload tokens.
func checkCertName(s string) error {
	switch {
	case s == "":
		return errors.New("empty")
	case len(s) > maxCertName:
		return fmt.Errorf("longer than %d bytes", maxCertName)
	case !utf8.ValidString(s):
		return errors.New("not UTF-8")
	case strings.TrimSpace(s) != s:
		return errors.New("spaces around it")
	case strings.HasPrefix(s, WorkloadPrefix):
		return fmt.Errorf("%q is kept for workload tokens", WorkloadPrefix)
	}
	for _, r := range s {
		if r != ' ' && !unicode.IsPrint(r) {
			return fmt.Errorf("character %U not allowed", r)
		}
	}
	return nil
}
