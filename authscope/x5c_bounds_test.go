package authscope

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// hostileChain is an x5c chain anyone can make without a private key of
// any weight: a leaf whose issuer is "evil", signed (as far as its
// algorithm field says) with RSA by a signature of bits/8 bytes, and n
// CA certificates named "evil" holding made-up RSA keys of bits bits
// and the largest exponent Go takes. Building the chain checks the leaf
// against each of them: one modular exponentiation of that size apiece.
func hostileChain(t *testing.T, n, bits int) []string {
	t.Helper()
	signer, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rsaSigner, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	hour := time.Now().Add(time.Hour)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "leaf"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: hour}
	evil := &x509.Certificate{SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "evil"}, IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, leaf, evil, &signer.PublicKey, rsaSigner)
	if err != nil {
		t.Fatal(err)
	}
	var cert struct {
		TBS, Alg asn1.RawValue
		Sig      asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &cert); err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, bits/8)
	sig[len(sig)-1] = 2 // below any modulus of that size
	cert.Sig = asn1.BitString{Bytes: sig, BitLength: len(sig) * 8}
	if der, err = asn1.Marshal(cert); err != nil {
		t.Fatal(err)
	}
	chain := []string{base64.StdEncoding.EncodeToString(der)}
	for i := range n {
		modulus, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), uint(bits)))
		modulus.SetBit(modulus, bits-1, 1)
		modulus.SetBit(modulus, 0, 1)
		ca := &x509.Certificate{SerialNumber: big.NewInt(int64(10 + i)), Subject: pkix.Name{CommonName: "evil"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: hour, IsCA: true, BasicConstraintsValid: true,
			KeyUsage: x509.KeyUsageCertSign}
		der, err := x509.CreateCertificate(rand.Reader, ca, ca, &rsa.PublicKey{N: modulus, E: 1<<31 - 1}, signer)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, base64.StdEncoding.EncodeToString(der))
	}
	return chain
}

// TestX5CBoundedBeforeVerifying: a token's x5c chain is refused before
// any signature in it is checked when it holds more certificates than a
// token service sends, or an RSA key over 8192 bits, so that a bearer
// token nobody signed cannot buy seconds of CPU (it is checked on every
// request that carries it, anonymous ones included). A chain of a root,
// an intermediate and the leaf still verifies.
//
// Before the bounds, the chain of 60 made-up 32768-bit keys (half a
// megabyte) was built: 2.5 s of CPU on this machine, refused only as
// "certificate signed by unknown authority"; that of one 16384-bit key
// likewise.
func TestX5CBoundedBeforeVerifying(t *testing.T) {
	is := newTestIssuer(t, nil, nil)
	// A chain of three of our own: root (trusted), intermediate, leaf.
	rk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rootTpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root3"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	rootDER, _ := x509.CreateCertificate(rand.Reader, rootTpl, rootTpl, &rk.PublicKey, rk)
	ik, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	interTpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "inter3"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	rootCert, _ := x509.ParseCertificate(rootDER)
	interCA, err := x509.CreateCertificate(rand.Reader, interTpl, rootCert, &ik.PublicKey, rk)
	if err != nil {
		t.Fatal(err)
	}
	interCert, _ := x509.ParseCertificate(interCA)
	lk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTpl := &x509.Certificate{SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "signer3"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTpl, interCert, &lk.PublicKey, ik)
	if err != nil {
		t.Fatal(err)
	}
	ks := NewKeySet()
	if err := ks.AddPEM(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER})); err != nil {
		t.Fatal(err)
	}
	v := &TokenVerifier{Keys: ks, Issuer: testIssuerName, Service: testService}
	withChain := func(chain []string, key any) func(*jwt.Token) any {
		return func(tok *jwt.Token) any {
			tok.Method = jwt.SigningMethodES256
			tok.Header["alg"] = "ES256"
			delete(tok.Header, "kid")
			tok.Header["x5c"] = chain
			return key
		}
	}
	b64 := base64.StdEncoding.EncodeToString
	if _, err := v.Verify(is.sign("a", nil, withChain([]string{b64(leafDER), b64(interCA)}, lk))); err != nil {
		t.Fatalf("leaf and intermediate to the bundle's root: %v", err)
	}

	signer, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for _, c := range []struct {
		name  string
		chain []string
		want  error
	}{
		{"60 made-up 32768-bit keys", hostileChain(t, 60, 32768), errChainTooLong},
		{"one made-up 16384-bit key", hostileChain(t, 1, 16384), errChainKeyLarge},
	} {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			_, err := v.Verify(is.sign("a", nil, withChain(c.chain, signer)))
			took := time.Since(start)
			// Verify keeps the reason as text (%v).
			if !errors.Is(err, ErrTokenInvalid) || err == nil || !strings.Contains(err.Error(), c.want.Error()) {
				t.Fatalf("Verify: %v (after %s), want a refusal before the chain is built: %v", err, took, c.want)
			}
			t.Logf("refused in %s", took)
		})
	}
}
