package sigpolicy_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/veraison/go-cose"

	"github.com/caddy-oci/caddy-oci/registry/sigpolicy"
	"github.com/caddy-oci/caddy-oci/registry/sigpolicy/sigtest"
)

// madeUpCert is a certificate holding a made-up RSA key of bits bits
// (a random odd modulus, the largest exponent Go takes): nobody holds
// its private key, and checking a signature with it costs its size
// squared all the same.
func madeUpCert(t *testing.T, bits int, ca bool) []byte {
	t.Helper()
	modulus, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), uint(bits)))
	modulus.SetBit(modulus, bits-1, 1)
	modulus.SetBit(modulus, 0, 1)
	signer, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tpl := &x509.Certificate{SerialNumber: big.NewInt(5), Subject: pkix.Name{CommonName: "made up"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}}
	if ca {
		tpl.IsCA, tpl.BasicConstraintsValid, tpl.KeyUsage = true, true, x509.KeyUsageCertSign
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &rsa.PublicKey{N: modulus, E: 1<<31 - 1}, signer)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestNotationEnvelopeChainBounded: a notation envelope whose chain holds
// a key notation's own checks would spend seconds on, or more
// certificates than a chain has, is refused before notation sees it, so
// that whoever may push a signature manifest (or a mirror's upstream)
// cannot make every pull of the manifest it names cost seconds of CPU. A
// signature of the policy's signer still passes.
//
// Before the bounds, notation checked the JWS envelope's signature with
// the made-up 65536-bit key of its leaf (a quarter of a second here;
// 4 s for a 262144-bit one in an 88 KB envelope, and a signature layer
// may be 1 MiB), and the chain of the signer's leaf and a made-up 65536-bit
// intermediate was checked link by link; the reasons were notation's
// ("verification error", "certificate-chain is invalid").
func TestNotationEnvelopeChainBounded(t *testing.T) {
	ns, err := sigtest.NewNotationSigner()
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(t.TempDir(), "root.pem")
	if err := os.WriteFile(root, ns.RootPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := sigpolicy.New(sigpolicy.Config{Match: "team/**", NotationCerts: []string{root}})
	if err != nil {
		t.Fatal(err)
	}
	subject := sigtest.Of("application/vnd.oci.image.manifest.v1+json", []byte(`{"schemaVersion":2}`))
	signed, err := ns.Sign(context.Background(), subject, sigpolicy.MediaTypeJWS)
	if err != nil {
		t.Fatal(err)
	}
	// edit returns the signer's JWS envelope with its chain (and, when
	// sigBytes is set, its signature, of that many bytes) replaced.
	edit := func(chain [][]byte, sigBytes int) []byte {
		var e map[string]any
		if err := json.Unmarshal(signed, &e); err != nil {
			t.Fatal(err)
		}
		e["header"].(map[string]any)["x5c"] = chain
		if sigBytes > 0 {
			prot, _ := base64.RawURLEncoding.DecodeString(e["protected"].(string))
			var ph map[string]any
			_ = json.Unmarshal(prot, &ph)
			ph["alg"] = "PS256"
			prot, _ = json.Marshal(ph)
			e["protected"] = base64.RawURLEncoding.EncodeToString(prot)
			sig := make([]byte, sigBytes)
			sig[len(sig)-1] = 2
			e["signature"] = base64.RawURLEncoding.EncodeToString(sig)
		}
		out, _ := json.Marshal(e)
		return out
	}
	var orig struct {
		Header struct {
			X5C [][]byte `json:"x5c"`
		} `json:"header"`
	}
	if err := json.Unmarshal(signed, &orig); err != nil || len(orig.Header.X5C) != 2 {
		t.Fatalf("the signer's envelope: %v, %d certificates", err, len(orig.Header.X5C))
	}
	leaf, ca := orig.Header.X5C[0], orig.Header.X5C[1]
	verify := func(env []byte, envType string) (time.Duration, error) {
		m, blobs := sigtest.NotationManifest(env, envType, subject)
		src := memSource{cands: [][]byte{m}, blobs: map[string][]byte{}}
		for _, b := range blobs {
			src.blobs[sigtest.Of("", b).Digest] = b
		}
		start := time.Now()
		err := p.Verify(context.Background(), src, sigpolicy.Subject{Repo: "team/app", Digest: subject.Digest, MediaType: subject.MediaType, Size: subject.Size}, time.Now())
		return time.Since(start), err
	}
	if _, err := verify(signed, sigpolicy.MediaTypeJWS); err != nil {
		t.Fatalf("the signer's signature: %v", err)
	}
	tooMany := [][]byte{leaf}
	for range 8 {
		tooMany = append(tooMany, ca)
	}
	// The same chain in a COSE envelope of the signer's.
	coseSigned, err := ns.Sign(context.Background(), subject, sigpolicy.MediaTypeCOSE)
	if err != nil {
		t.Fatal(err)
	}
	editCOSE := func(chain [][]byte) []byte {
		var msg cose.Sign1Message
		if err := msg.UnmarshalCBOR(coseSigned); err != nil {
			t.Fatal(err)
		}
		certs := make([]any, len(chain))
		for i, c := range chain {
			certs[i] = c
		}
		msg.Headers.Unprotected[cose.HeaderLabelX5Chain] = certs
		msg.Headers.RawUnprotected = nil // else the original is encoded again
		out, err := msg.MarshalCBOR()
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	for _, c := range []struct {
		name    string
		env     []byte
		envType string
		want    string
	}{
		{"leaf with a made-up 65536-bit key", edit([][]byte{madeUpCert(t, 65536, false)}, 65536/8), sigpolicy.MediaTypeJWS, "envelope signing certificate"},
		{"intermediate with a made-up 65536-bit key", edit([][]byte{leaf, madeUpCert(t, 65536, true), ca}, 0), sigpolicy.MediaTypeJWS, "RSA key of 65536 bits"},
		{"nine certificates", edit(tooMany, 0), sigpolicy.MediaTypeJWS, "9 certificates"},
		{"COSE: intermediate with a made-up 65536-bit key", editCOSE([][]byte{leaf, madeUpCert(t, 65536, true), ca}), sigpolicy.MediaTypeCOSE, "RSA key of 65536 bits"},
	} {
		t.Run(c.name, func(t *testing.T) {
			took, err := verify(c.env, c.envType)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Verify: %v (after %s), want a refusal before notation checks: %q", err, took, c.want)
			}
			t.Logf("refused in %s", took)
		})
	}
}
