package authscope

// Trusted keys for bearer tokens. A Docker token service names its signing
// key in the token header: `kid` as an RFC 7638 JWK thumbprint (docker_auth
// today), as the older libtrust fingerprint (`ABCD:EFGH:...`), or as the
// key id of a JWKS entry; or it sends the certificate chain in `x5c`. The
// key is only ever taken from what the operator configured: a chain in
// `x5c` must verify to the trusted bundle, and a key embedded in the token
// (`jwk`) is never used.

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base32"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"
)

// KeySet is the set of keys a Verifier trusts.
type KeySet struct {
	byKid map[string]crypto.PublicKey
	roots *x509.CertPool
	nroot int
}

// ErrKeyUnknown is returned when a token names a key that is not trusted.
var ErrKeyUnknown = errors.New("signing key not trusted")

// NewKeySet returns an empty key set; add keys with AddPEM and AddJWKS.
func NewKeySet() *KeySet {
	return &KeySet{byKid: map[string]crypto.PublicKey{}, roots: x509.NewCertPool()}
}

// Len is the number of distinct trusted keys and certificates.
func (ks *KeySet) Len() int {
	seen := map[string]bool{}
	for _, k := range ks.byKid {
		if t, err := JWKThumbprint(k); err == nil {
			seen[t] = true
		}
	}
	return len(seen)
}

// AddPEM adds every certificate and public key of a PEM bundle
// ("CERTIFICATE", "PUBLIC KEY", "RSA PUBLIC KEY"). Certificates also
// become roots for `x5c` chains. A bundle with no key is an error, as is a
// block of another type: a private key in a trust bundle is a mistake the
// operator wants to hear about.
func (ks *KeySet) AddPEM(data []byte) error {
	n := 0
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		var pub crypto.PublicKey
		switch b.Type {
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return fmt.Errorf("certificate %d: %w", n+1, err)
			}
			ks.roots.AddCert(c)
			ks.nroot++
			pub = c.PublicKey
		case "PUBLIC KEY":
			k, err := x509.ParsePKIXPublicKey(b.Bytes)
			if err != nil {
				return fmt.Errorf("public key %d: %w", n+1, err)
			}
			pub = k
		case "RSA PUBLIC KEY":
			k, err := x509.ParsePKCS1PublicKey(b.Bytes)
			if err != nil {
				return fmt.Errorf("public key %d: %w", n+1, err)
			}
			pub = k
		default:
			return fmt.Errorf("PEM block %q: only certificates and public keys belong in a trust bundle", b.Type)
		}
		if err := ks.add(pub, ""); err != nil {
			return err
		}
		n++
	}
	if n == 0 {
		return errors.New("no certificate or public key in PEM data")
	}
	return nil
}

// AddJWKS adds the public keys of a JWK Set (`{"keys":[...]}`), each under
// its `kid` (when present) and its thumbprint. Keys of other types and
// private parts are ignored; a set without a usable key is an error.
func (ks *KeySet) AddJWKS(data []byte) error {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return fmt.Errorf("JWKS: %w", err)
	}
	n := 0
	for i, raw := range set.Keys {
		var j jwk
		if err := json.Unmarshal(raw, &j); err != nil {
			return fmt.Errorf("JWKS key %d: %w", i, err)
		}
		if j.Use != "" && j.Use != "sig" {
			continue
		}
		pub, err := j.publicKey()
		if err != nil {
			return fmt.Errorf("JWKS key %d: %w", i, err)
		}
		if err := ks.add(pub, j.Kid); err != nil {
			return err
		}
		n++
	}
	if n == 0 {
		return errors.New("JWKS holds no signing key")
	}
	return nil
}

func (ks *KeySet) add(pub crypto.PublicKey, kid string) error {
	t, err := JWKThumbprint(pub)
	if err != nil {
		return err
	}
	ks.byKid[t] = pub
	if f, err := LibtrustFingerprint(pub); err == nil {
		ks.byKid[f] = pub
	}
	if kid != "" {
		ks.byKid[kid] = pub
	}
	return nil
}

// key returns the trusted key for a token header: from x5c when present
// (the chain must verify to the bundle at now), else by kid.
func (ks *KeySet) key(header map[string]any, now time.Time) (crypto.PublicKey, error) {
	if raw, ok := header["x5c"]; ok {
		return ks.chainKey(raw, now)
	}
	kid, _ := header["kid"].(string)
	if kid == "" {
		return nil, fmt.Errorf("%w: token names no key (no kid, no x5c)", ErrKeyUnknown)
	}
	if k, ok := ks.byKid[kid]; ok {
		return k, nil
	}
	return nil, fmt.Errorf("%w: kid %q", ErrKeyUnknown, kid)
}

// Bounds of an x5c chain, checked before any signature in it is: the
// chain is whoever sent the token's, and building it to the bundle checks
// the signature of each certificate against every candidate parent the
// chain offers (up to 100 checks, Go's cap). RSA has no upper bound on the
// modulus in Go's certificate parser, and a check's cost grows with the
// square of the modulus: 60 made-up intermediates of 32768-bit keys (half
// a megabyte of Authorization header, no private key needed) cost 2.5 s
// of CPU per request, for anyone. Token services send the leaf and its
// intermediates, a handful; crypto/tls refuses RSA keys over 8192 bits
// in handshakes likewise.
const (
	maxChainCerts   = 5
	maxChainRSABits = 8192
)

// Refusals of an x5c chain before it is verified.
var (
	errChainTooLong  = errors.New("x5c holds more certificates than a token service sends")
	errChainKeyLarge = errors.New("x5c certificate with an RSA key over 8192 bits")
)

func (ks *KeySet) chainKey(raw any, now time.Time) (crypto.PublicKey, error) {
	list, ok := raw.([]any)
	if !ok || len(list) == 0 {
		return nil, fmt.Errorf("%w: malformed x5c", ErrKeyUnknown)
	}
	if len(list) > maxChainCerts {
		return nil, fmt.Errorf("%w: %w (%d, at most %d)", ErrKeyUnknown, errChainTooLong, len(list), maxChainCerts)
	}
	if ks.nroot == 0 {
		return nil, fmt.Errorf("%w: x5c chain but no trusted certificates", ErrKeyUnknown)
	}
	certs := make([]*x509.Certificate, len(list))
	for i, v := range list {
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("%w: malformed x5c", ErrKeyUnknown)
		}
		der, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("%w: x5c entry %d: %v", ErrKeyUnknown, i, err)
		}
		if certs[i], err = x509.ParseCertificate(der); err != nil {
			return nil, fmt.Errorf("%w: x5c entry %d: %v", ErrKeyUnknown, i, err)
		}
		if k, ok := certs[i].PublicKey.(*rsa.PublicKey); ok && k.N.BitLen() > maxChainRSABits {
			return nil, fmt.Errorf("%w: x5c entry %d: %w (%d bits)", ErrKeyUnknown, i, errChainKeyLarge, k.N.BitLen())
		}
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{
		Roots:         ks.roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: x5c chain: %v", ErrKeyUnknown, err)
	}
	return certs[0].PublicKey, nil
}

// jwk is the public part of a JSON Web Key.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid,omitempty"`
	Use string `json:"use,omitempty"`
	Crv string `json:"crv,omitempty"`
	N   string `json:"n,omitempty"`
	E   string `json:"e,omitempty"`
	X   string `json:"x,omitempty"`
	Y   string `json:"y,omitempty"`
}

var b64 = base64.RawURLEncoding

func (j jwk) publicKey() (crypto.PublicKey, error) {
	dec := func(s, what string) ([]byte, error) {
		b, err := b64.DecodeString(s)
		if err != nil || len(b) == 0 {
			return nil, fmt.Errorf("%s key: bad %q", j.Kty, what)
		}
		return b, nil
	}
	switch j.Kty {
	case "RSA":
		n, err := dec(j.N, "n")
		if err != nil {
			return nil, err
		}
		e, err := dec(j.E, "e")
		if err != nil {
			return nil, err
		}
		eb := new(big.Int).SetBytes(e)
		if !eb.IsInt64() || eb.Int64() > 1<<31-1 || eb.Int64() < 3 {
			return nil, errors.New("RSA key: bad exponent")
		}
		return &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(eb.Int64())}, nil
	case "EC":
		var curve elliptic.Curve
		switch j.Crv {
		case "P-256":
			curve = elliptic.P256()
		case "P-384":
			curve = elliptic.P384()
		case "P-521":
			curve = elliptic.P521()
		default:
			return nil, fmt.Errorf("EC key: unsupported curve %q", j.Crv)
		}
		x, err := dec(j.X, "x")
		if err != nil {
			return nil, err
		}
		y, err := dec(j.Y, "y")
		if err != nil {
			return nil, err
		}
		size := (curve.Params().BitSize + 7) / 8
		if len(x) != size || len(y) != size {
			return nil, errors.New("EC key: coordinates of the wrong size")
		}
		// Parse through the uncompressed point form so the point is
		// checked to lie on the curve.
		pt := append(append([]byte{4}, x...), y...)
		k, err := ecdsa.ParseUncompressedPublicKey(curve, pt)
		if err != nil {
			return nil, fmt.Errorf("EC key: %w", err)
		}
		return k, nil
	case "OKP":
		if j.Crv != "Ed25519" {
			return nil, fmt.Errorf("OKP key: unsupported curve %q", j.Crv)
		}
		x, err := dec(j.X, "x")
		if err != nil {
			return nil, err
		}
		if len(x) != ed25519.PublicKeySize {
			return nil, errors.New("Ed25519 key: wrong size")
		}
		return ed25519.PublicKey(x), nil
	}
	return nil, fmt.Errorf("unsupported key type %q", j.Kty)
}

// JWKThumbprint is the RFC 7638 thumbprint of a public key: base64url
// (unpadded) of the SHA-256 of the key's required JWK members, in
// lexical order, without whitespace. docker_auth puts it in `kid`.
func JWKThumbprint(pub crypto.PublicKey) (string, error) {
	var canon string
	switch k := pub.(type) {
	case *rsa.PublicKey:
		canon = fmt.Sprintf(`{"e":"%s","kty":"RSA","n":"%s"}`,
			b64.EncodeToString(big.NewInt(int64(k.E)).Bytes()), b64.EncodeToString(k.N.Bytes()))
	case *ecdsa.PublicKey:
		var crv string
		switch k.Curve {
		case elliptic.P256():
			crv = "P-256"
		case elliptic.P384():
			crv = "P-384"
		case elliptic.P521():
			crv = "P-521"
		default:
			return "", errors.New("unsupported EC curve")
		}
		pt, err := k.Bytes() // 0x04 || X || Y, each padded to the curve size
		if err != nil {
			return "", err
		}
		size := (len(pt) - 1) / 2
		canon = fmt.Sprintf(`{"crv":"%s","kty":"EC","x":"%s","y":"%s"}`,
			crv, b64.EncodeToString(pt[1:1+size]), b64.EncodeToString(pt[1+size:]))
	case ed25519.PublicKey:
		canon = fmt.Sprintf(`{"crv":"Ed25519","kty":"OKP","x":"%s"}`, b64.EncodeToString(k))
	default:
		return "", fmt.Errorf("unsupported key type %T", pub)
	}
	sum := sha256.Sum256([]byte(canon))
	return b64.EncodeToString(sum[:]), nil
}

// LibtrustFingerprint is the key id form of docker/libtrust (docker_auth's
// older default): the SHA-256 of the DER SubjectPublicKeyInfo, cut to 240
// bits, base32, in groups of four joined by colons.
func LibtrustFingerprint(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(der)
	s := base32.StdEncoding.EncodeToString(sum[:30])
	var b strings.Builder
	for i := 0; i < len(s); i += 4 {
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(s[i : i+4])
	}
	return b.String(), nil
}
