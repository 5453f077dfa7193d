package authscope

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// withMethod signs with another method and key.
func withMethod(m jwt.SigningMethod, key any) func(*jwt.Token) any {
	return func(t *jwt.Token) any {
		t.Method = m
		t.Header["alg"] = m.Alg()
		return key
	}
}

func setClaim(k string, v any) func(*jwt.Token) any {
	return func(t *jwt.Token) any {
		t.Claims.(jwt.MapClaims)[k] = v
		return nil
	}
}

func pullOn(name string) []AccessEntry {
	return []AccessEntry{{Type: "repository", Name: name, Actions: []string{"pull"}}}
}

func TestVerifyRefusals(t *testing.T) {
	is := newTestIssuer(t, nil, nil)
	v := is.verifier()
	pubDER, err := x509.MarshalPKIXPublicKey(&is.Key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tests := []struct {
		name string
		edit func(*jwt.Token) any
	}{
		{"alg none", withMethod(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType)},
		{"HS256 signed with the public key", withMethod(jwt.SigningMethodHS256, pubPEM)},
		{"HS256 signed with the public key DER", withMethod(jwt.SigningMethodHS256, pubDER)},
		{"unknown kid", func(t *jwt.Token) any { t.Header["kid"] = "AAAA:BBBB"; return nil }},
		{"no kid", func(t *jwt.Token) any { delete(t.Header, "kid"); return nil }},
		{"signed by another key under the trusted kid", func(*jwt.Token) any { return other }},
		{"expired", setClaim("exp", now.Add(-time.Minute).Unix())},
		{"no exp", func(t *jwt.Token) any { delete(t.Claims.(jwt.MapClaims), "exp"); return nil }},
		{"not yet valid", setClaim("nbf", now.Add(time.Minute).Unix())},
		{"wrong iss", setClaim("iss", "someone else")},
		{"no iss", func(t *jwt.Token) any { delete(t.Claims.(jwt.MapClaims), "iss"); return nil }},
		{"wrong aud", setClaim("aud", "other.service")},
		{"wrong aud list", setClaim("aud", []string{"a", "b"})},
		{"embedded jwk", func(t *jwt.Token) any {
			delete(t.Header, "kid")
			t.Header["jwk"] = map[string]string{"kty": "RSA"}
			return other
		}},
		{"x5c without trusted certificates", func(t *jwt.Token) any {
			t.Header["x5c"] = []string{base64.StdEncoding.EncodeToString([]byte("junk"))}
			return nil
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok := is.sign("alice", pullOn("x"), tc.edit)
			if _, err := v.Verify(tok); !errors.Is(err, ErrTokenInvalid) {
				t.Fatalf("Verify = %v, want ErrTokenInvalid", err)
			}
		})
	}
	t.Run("garbage", func(t *testing.T) {
		for _, s := range []string{"", "a.b.c", "x", strings.Repeat("A", 1000)} {
			if _, err := v.Verify(s); !errors.Is(err, ErrTokenInvalid) {
				t.Errorf("Verify(%q) = %v", s, err)
			}
		}
	})
}

func TestVerifyAccepts(t *testing.T) {
	is := newTestIssuer(t, nil, nil)
	v := is.verifier()
	now := time.Now()
	tests := []struct {
		name string
		edit func(*jwt.Token) any
	}{
		{"docker_auth as is", nil},
		{"expired within leeway", setClaim("exp", now.Add(-10*time.Second).Unix())},
		{"nbf within leeway", setClaim("nbf", now.Add(10*time.Second).Unix())},
		{"aud as a list", setClaim("aud", []string{"x", testService})},
		{"libtrust kid", func(t *jwt.Token) any {
			kid, err := LibtrustFingerprint(&is.Key.PublicKey)
			if err != nil {
				panic(err)
			}
			t.Header["kid"] = kid
			return nil
		}},
		{"RS512", withMethod(jwt.SigningMethodRS512, nil)},
		{"PS256", withMethod(jwt.SigningMethodPS256, nil)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := v.Verify(is.sign("alice", pullOn("x"), tc.edit))
			if err != nil {
				t.Fatal(err)
			}
			if c.Subject != "alice" || !c.Grants(RepositoryScope("x", "pull")) {
				t.Fatalf("claims %+v", c)
			}
		})
	}
}

func TestVerifyOtherKeyTypes(t *testing.T) {
	is := newTestIssuer(t, nil, nil)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ec384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	tests := []struct {
		name string
		m    jwt.SigningMethod
		priv any
		pub  any
	}{
		{"ES256", jwt.SigningMethodES256, ec, &ec.PublicKey},
		{"ES384", jwt.SigningMethodES384, ec384, &ec384.PublicKey},
		{"EdDSA", jwt.SigningMethodEdDSA, ed, ed.Public()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ks := NewKeySet()
			der, _ := x509.MarshalPKIXPublicKey(tc.pub)
			if err := ks.AddPEM(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})); err != nil {
				t.Fatal(err)
			}
			v := &TokenVerifier{Keys: ks, Issuer: testIssuerName, Service: testService}
			kid, err := JWKThumbprint(tc.pub)
			if err != nil {
				t.Fatal(err)
			}
			tok := is.sign("bob", pullOn("x"), func(t *jwt.Token) any {
				t.Method = tc.m
				t.Header["alg"] = tc.m.Alg()
				t.Header["kid"] = kid
				return tc.priv
			})
			if _, err := v.Verify(tok); err != nil {
				t.Fatal(err)
			}
			// the same key under an algorithm of another family is refused
			bad := is.sign("bob", pullOn("x"), func(t *jwt.Token) any {
				t.Header["kid"] = kid
				return nil
			})
			if _, err := v.Verify(bad); !errors.Is(err, ErrTokenInvalid) {
				t.Fatalf("RS256 token under %s key: %v", tc.name, err)
			}
		})
	}
}

// TestThumbprintRFC7638 checks the example of RFC 7638 section 3.1.
func TestThumbprintRFC7638(t *testing.T) {
	j := jwk{Kty: "RSA", E: "AQAB", N: "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}
	pub, err := j.publicKey()
	if err != nil {
		t.Fatal(err)
	}
	got, err := JWKThumbprint(pub)
	if err != nil {
		t.Fatal(err)
	}
	if want := "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"; got != want {
		t.Fatalf("thumbprint %s, want %s", got, want)
	}
	f, err := LibtrustFingerprint(pub)
	if err != nil {
		t.Fatal(err)
	}
	if parts := strings.Split(f, ":"); len(parts) != 12 || len(parts[0]) != 4 {
		t.Fatalf("libtrust fingerprint %q: want 12 groups of 4", f)
	}
}

func TestJWKS(t *testing.T) {
	is := newTestIssuer(t, nil, nil)
	k := &is.Key.PublicKey
	jwks := `{"keys":[{"kty":"RSA","kid":"key-1","use":"sig","alg":"RS256","n":"` +
		b64.EncodeToString(k.N.Bytes()) + `","e":"` + b64.EncodeToString(big.NewInt(int64(k.E)).Bytes()) + `"},` +
		`{"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"}]}`
	ks := NewKeySet()
	if err := ks.AddJWKS([]byte(jwks)); err != nil {
		t.Fatal(err)
	}
	v := &TokenVerifier{Keys: ks, Issuer: testIssuerName, Service: testService}
	for _, kid := range []string{"key-1", mustThumb(t, k)} {
		tok := is.sign("a", nil, func(t *jwt.Token) any { t.Header["kid"] = kid; return nil })
		if _, err := v.Verify(tok); err != nil {
			t.Errorf("kid %s: %v", kid, err)
		}
	}
	for _, bad := range []string{`{}`, `{"keys":[]}`, `{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}`, `nope`} {
		if err := NewKeySet().AddJWKS([]byte(bad)); err == nil {
			t.Errorf("AddJWKS(%s) accepted", bad)
		}
	}
}

func mustThumb(t *testing.T, k any) string {
	t.Helper()
	s, err := JWKThumbprint(k)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// testCA makes a CA and a leaf it signed.
func testCA(t *testing.T, cn string) (caPEM []byte, leafDER []byte, leafKey *ecdsa.PrivateKey) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	leafKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: cn + " signer"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	leafDER, err = x509.CreateCertificate(rand.Reader, leaf, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), leafDER, leafKey
}

func TestX5C(t *testing.T) {
	is := newTestIssuer(t, nil, nil)
	caPEM, leafDER, leafKey := testCA(t, "trusted")
	_, strangerDER, strangerKey := testCA(t, "stranger")
	ks := NewKeySet()
	if err := ks.AddPEM(caPEM); err != nil {
		t.Fatal(err)
	}
	v := &TokenVerifier{Keys: ks, Issuer: testIssuerName, Service: testService}
	x5c := func(der []byte, key any) func(*jwt.Token) any {
		return func(t *jwt.Token) any {
			t.Method = jwt.SigningMethodES256
			t.Header["alg"] = "ES256"
			delete(t.Header, "kid")
			t.Header["x5c"] = []string{base64.StdEncoding.EncodeToString(der)}
			return key
		}
	}
	if _, err := v.Verify(is.sign("a", nil, x5c(leafDER, leafKey))); err != nil {
		t.Fatalf("chain to the bundle: %v", err)
	}
	if _, err := v.Verify(is.sign("a", nil, x5c(strangerDER, strangerKey))); !errors.Is(err, ErrTokenInvalid) {
		t.Fatalf("chain to another CA: %v", err)
	}
	// The trusted leaf's chain, signed by another key.
	if _, err := v.Verify(is.sign("a", nil, x5c(leafDER, strangerKey))); !errors.Is(err, ErrTokenInvalid) {
		t.Fatalf("trusted chain, wrong signer: %v", err)
	}
}

func TestAddPEM(t *testing.T) {
	caPEM, _, _ := testCA(t, "x")
	ks := NewKeySet()
	if err := ks.AddPEM(caPEM); err != nil || ks.Len() != 1 {
		t.Fatalf("AddPEM: %v, %d keys", err, ks.Len())
	}
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalECPrivateKey(priv)
	for name, data := range map[string][]byte{
		"empty":       nil,
		"private key": pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}),
		"bad cert":    pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("x")}),
	} {
		if err := NewKeySet().AddPEM(data); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestGrants(t *testing.T) {
	c := &TokenClaims{Access: []AccessEntry{
		{Type: "repository", Name: "a", Actions: []string{"pull"}},
		{Type: "repository", Name: "a", Actions: []string{"push"}},
		{Type: "repository", Name: "b", Actions: []string{"*"}},
		{Type: "registry", Name: "catalog", Actions: []string{"*"}},
	}}
	for _, tc := range []struct {
		s    Scope
		want bool
	}{
		{RepositoryScope("a", "pull", "push"), true},
		{RepositoryScope("a", "delete"), false},
		{RepositoryScope("b", "pull", "push", "delete"), true},
		{RepositoryScope("c", "pull"), false},
		{RepositoryScope("docker.io/a", "pull"), false},
		{CatalogScope, true},
		{Scope{Type: "registry", Name: "a", Actions: []string{"pull"}}, false},
	} {
		if got := c.Grants(tc.s); got != tc.want {
			t.Errorf("Grants(%s) = %v", tc.s, got)
		}
	}
}
