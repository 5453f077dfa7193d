package sigpolicy

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"syscall"
	"time"

	"github.com/caddy-oci/caddy-oci/internal/outbound"
	"github.com/notaryproject/notation-core-go/revocation"
	corecrl "github.com/notaryproject/notation-core-go/revocation/crl"
	"github.com/notaryproject/notation-core-go/revocation/purpose"
	"github.com/notaryproject/notation-core-go/signature"
	"github.com/notaryproject/notation-go"
	"github.com/notaryproject/notation-go/verifier"
	"github.com/notaryproject/notation-go/verifier/trustpolicy"
	"github.com/notaryproject/notation-go/verifier/truststore"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/veraison/go-cose"
)

// trustStoreName is the one named trust store of the policy built here.
const trustStoreName = "caddy-oci"

// certStore is a trust store held in memory: the notation_cert files.
type certStore []*x509.Certificate

func (c certStore) GetCertificates(_ context.Context, typ truststore.Type, name string) ([]*x509.Certificate, error) {
	if typ != truststore.TypeCA || name != trustStoreName {
		return nil, fmt.Errorf("no trust store %s:%s", typ, name)
	}
	return c, nil
}

// errNetwork: a revocation check tried to leave the machine.
var errNetwork = errors.New("revocation checks reach loopback only")

// loopbackClient is the HTTP client of revocation checks: OCSP and CRL
// endpoints on loopback are asked (a test's, or a local responder), any
// other address is refused at dial time, so a pull never waits on the
// network for a certificate authority nor leaks which image is pulled.
func loopbackClient() *http.Client {
	d := &net.Dialer{
		Timeout: 2 * time.Second,
		Control: func(_, address string, _ syscall.RawConn) error {
			host, _, err := net.SplitHostPort(address)
			if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
				return errNetwork
			}
			return nil
		},
	}
	return &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, Proxy: nil, MaxResponseHeaderBytes: outbound.MaxResponseHeaderBytes}}
}

// newNotationVerifier builds notation's verifier from a trust policy made
// here, not read from notation's config folder: every repository, the
// certificates as the one CA trust store, any identity they certify,
// level strict (integrity, authenticity, expiry, revocation enforced).
func newNotationVerifier(certs []*x509.Certificate) (notation.Verifier, error) {
	doc := &trustpolicy.Document{
		Version: "1.0",
		TrustPolicies: []trustpolicy.TrustPolicy{{
			Name:                  "caddy-oci",
			RegistryScopes:        []string{"*"},
			SignatureVerification: trustpolicy.SignatureVerification{VerificationLevel: trustpolicy.LevelStrict.Name},
			TrustStores:           []string{string(truststore.TypeCA) + ":" + trustStoreName},
			TrustedIdentities:     []string{"*"},
		}},
	}
	client := loopbackClient()
	fetcher, err := corecrl.NewHTTPFetcher(client)
	if err != nil {
		return nil, err
	}
	codeSigning, err := revocation.NewWithOptions(revocation.Options{
		OCSPHTTPClient: client, CRLFetcher: fetcher, CertChainPurpose: purpose.CodeSigning,
	})
	if err != nil {
		return nil, err
	}
	timestamping, err := revocation.NewWithOptions(revocation.Options{
		OCSPHTTPClient: client, CRLFetcher: fetcher, CertChainPurpose: purpose.Timestamping,
	})
	if err != nil {
		return nil, err
	}
	return verifier.NewWithOptions(doc, certStore(certs), nil, verifier.VerifierOptions{
		RevocationCodeSigningValidator:  codeSigning,
		RevocationTimestampingValidator: timestamping,
	})
}

// verifyNotation checks the envelope of a notation signature manifest
// against the policy's certificates; notation itself checks that the
// signed payload names s (digest, size, media type).
func (p *Policy) verifyNotation(ctx context.Context, src Source, s Subject, m sigManifest) error {
	if p.notation == nil {
		return errors.New("notation signature, and the policy has no notation_cert")
	}
	if len(m.Layers) != 1 || (m.Layers[0].MediaType != MediaTypeJWS && m.Layers[0].MediaType != MediaTypeCOSE) {
		return errors.New("notation signature manifest without one envelope layer")
	}
	l := m.Layers[0]
	env, err := blob(ctx, src, l)
	if err != nil {
		return err
	}
	if err := checkEnvelopeChain(l.MediaType, env); err != nil {
		return fmt.Errorf("notation signature: %w", err)
	}
	desc := ocispec.Descriptor{MediaType: s.MediaType, Digest: digest.Digest(s.Digest), Size: s.Size}
	// Notation wants a full reference to pick a trust policy; the one
	// built here covers every scope, so any well-formed one does.
	ref := "registry.invalid/" + s.Repo + "@" + s.Digest
	if _, err := p.notation.Verify(ctx, desc, env, notation.VerifierVerifyOptions{
		ArtifactReference:  ref,
		SignatureMediaType: l.MediaType,
	}); err != nil {
		return fmt.Errorf("notation signature: %w", err)
	}
	return nil
}

func decodeBase64(s string) ([]byte, error) { return base64.StdEncoding.DecodeString(s) }

// Bounds of the certificate chain a notation envelope carries, checked
// before notation sees the envelope. The chain is the pusher's (or a
// mirror's upstream's), and notation checks the envelope's signature with
// its leaf's key, then each certificate's signature with the next one's
// key, before it asks whether any of them is trusted; Go's certificate
// parser puts no bound on an RSA modulus, whose checks cost its size
// squared: an 88 KB envelope whose leaf held a made-up 262144-bit key
// (no private key needed) cost 4 s of CPU per candidate, and one of the
// 1 MiB a signature layer may be would cost minutes, on every pull of
// the manifest it names once the refusal expired (notationFailTTL).
const (
	// maxEnvelopeCerts: leaf, intermediates and root, a handful.
	maxEnvelopeCerts = 8
	// maxEnvelopeRSABits bounds an RSA key of the chain past its leaf
	// (crypto/tls's bound in handshakes); the leaf must have a key the
	// Notary Project specification allows, as notation itself requires
	// later (RSA 2048, 3072 or 4096 bits, ECDSA P-256, P-384 or P-521).
	maxEnvelopeRSABits = 8192
)

// checkEnvelopeChain refuses an envelope whose certificate chain is longer
// than maxEnvelopeCerts, or holds a key past the bounds above. It reads
// the chain where notation does (a JWS envelope's unprotected header
// x5c, a COSE_Sign1's unprotected x5chain) with the same parsers, and
// verifies nothing.
func checkEnvelopeChain(mediaType string, env []byte) error {
	var chain [][]byte
	switch mediaType {
	case MediaTypeJWS:
		var e struct {
			Header struct {
				X5C [][]byte `json:"x5c"`
			} `json:"header"`
		}
		if err := json.Unmarshal(env, &e); err != nil {
			return fmt.Errorf("JWS envelope unreadable: %w", err)
		}
		chain = e.Header.X5C
	case MediaTypeCOSE:
		var msg cose.Sign1Message
		if err := msg.UnmarshalCBOR(env); err != nil {
			return fmt.Errorf("COSE envelope unreadable: %w", err)
		}
		certs, _ := msg.Headers.Unprotected[cose.HeaderLabelX5Chain].([]any)
		for _, c := range certs {
			der, ok := c.([]byte)
			if !ok {
				return errors.New("COSE envelope: x5chain holds something other than certificates")
			}
			chain = append(chain, der)
		}
	}
	if len(chain) > maxEnvelopeCerts {
		return fmt.Errorf("envelope with %d certificates in its chain, at most %d", len(chain), maxEnvelopeCerts)
	}
	for i, der := range chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return fmt.Errorf("envelope certificate %d: %w", i, err)
		}
		if i == 0 {
			if _, err := signature.ExtractKeySpec(c); err != nil {
				return fmt.Errorf("envelope signing certificate: %w", err)
			}
			continue
		}
		if k, ok := c.PublicKey.(*rsa.PublicKey); ok && k.N.BitLen() > maxEnvelopeRSABits {
			return fmt.Errorf("envelope certificate %d: RSA key of %d bits, at most %d", i, k.N.BitLen(), maxEnvelopeRSABits)
		}
	}
	return nil
}
