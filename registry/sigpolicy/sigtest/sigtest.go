// Package sigtest signs manifests for tests, the way cosign and notation
// do, with generated keys and the ecosystems' own signing libraries:
// sigstore's signer for cosign's simple-signing payload, notation-go's
// generic signer for notation envelopes. It builds the signature manifests
// (cosign's tag form and OCI 1.1 referrers) that tests push.
package sigtest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"time"

	"github.com/notaryproject/notation-go"
	"github.com/notaryproject/notation-go/signer"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/caddy-oci/caddy-oci/registry/sigpolicy"
)

// Descriptor names a manifest or blob.
type Descriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
}

// Of describes body as a blob or manifest of media type mt.
func Of(mt string, body []byte) Descriptor {
	sum := sha256.Sum256(body)
	return Descriptor{MediaType: mt, Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(body))}
}

// emptyConfig is OCI's empty JSON config of artifacts.
var emptyConfig = []byte("{}")

const mediaTypeEmpty = "application/vnd.oci.empty.v1+json"

// CosignKey is an ECDSA P-256 key, as `cosign generate-key-pair` makes.
type CosignKey struct {
	sv  signature.SignerVerifier
	pub []byte
}

// NewCosignKey generates a key.
func NewCosignKey() (*CosignKey, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	sv, err := signature.LoadSignerVerifier(priv, crypto.SHA256)
	if err != nil {
		return nil, err
	}
	pub, err := cryptoutils.MarshalPublicKeyToPEM(priv.Public())
	if err != nil {
		return nil, err
	}
	return &CosignKey{sv: sv, pub: pub}, nil
}

// PublicPEM is the key's public half, as cosign.pub holds it.
func (k *CosignKey) PublicPEM() []byte { return k.pub }

// CosignPayload is cosign's simple-signing payload naming manifest digest
// d of repository ref.
func CosignPayload(ref, d string) []byte {
	b, _ := json.Marshal(map[string]any{
		"critical": map[string]any{
			"identity": map[string]string{"docker-reference": ref},
			"image":    map[string]string{"docker-manifest-digest": d},
			"type":     "cosign container image signature",
		},
		"optional": nil,
	})
	return b
}

// Sign signs payload and returns the signature, base64 as in cosign's
// annotation.
func (k *CosignKey) Sign(payload []byte) (string, error) {
	sig, err := k.sv.SignMessage(bytes.NewReader(payload))
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(sig), nil
}

// CosignManifest is cosign's signature manifest: the payload as its one
// layer, annotated with sig. With subject set it is the OCI 1.1 referrer
// form (artifactType and subject), else the tag form. blobs are what the
// manifest references, to push first.
func CosignManifest(payload []byte, sig string, subject *Descriptor) (manifest []byte, blobs [][]byte) {
	layer := Of(sigpolicy.MediaTypeCosignPayload, payload)
	m := map[string]any{
		"schemaVersion": 2,
		"mediaType":     ocispec.MediaTypeImageManifest,
		"config":        Of(mediaTypeEmpty, emptyConfig),
		"layers": []any{map[string]any{
			"mediaType": layer.MediaType, "digest": layer.Digest, "size": layer.Size,
			"annotations": map[string]string{sigpolicy.AnnotationCosignSignature: sig},
		}},
	}
	if subject != nil {
		m["artifactType"] = sigpolicy.ArtifactTypeCosign
		m["subject"] = subject
	}
	b, _ := json.Marshal(m)
	return b, [][]byte{emptyConfig, payload}
}

// NotationSigner holds a generated CA and a code-signing leaf it issued.
type NotationSigner struct {
	signer *signer.GenericSigner
	root   []byte
	leaf   []byte
}

// NewNotationSigner generates a CA and a code-signing certificate.
func NewNotationSigner() (*NotationSigner, error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test CA", Organization: []string{"caddy-oci tests"}, Country: []string{"US"}, Province: []string{"WA"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "test signer", Organization: []string{"caddy-oci tests"}, Country: []string{"US"}, Province: []string{"WA"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, key.Public(), caKey)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(leafDER)
	if err != nil {
		return nil, err
	}
	gs, err := signer.NewGenericSigner(key, []*x509.Certificate{leaf, ca})
	if err != nil {
		return nil, err
	}
	return &NotationSigner{
		signer: gs,
		root:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		leaf:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}),
	}, nil
}

// RootPEM is the CA certificate: what notation_cert names.
func (s *NotationSigner) RootPEM() []byte { return s.root }

// Sign makes a notation envelope (envType: sigpolicy.MediaTypeJWS or
// MediaTypeCOSE) over subject.
func (s *NotationSigner) Sign(ctx context.Context, subject Descriptor, envType string) ([]byte, error) {
	desc := ocispec.Descriptor{MediaType: subject.MediaType, Digest: digest.Digest(subject.Digest), Size: subject.Size}
	env, _, err := s.signer.Sign(ctx, desc, notation.SignerSignOptions{SignatureMediaType: envType, ExpiryDuration: time.Hour})
	if err != nil {
		return nil, fmt.Errorf("notation sign: %w", err)
	}
	return env, nil
}

// NotationManifest is notation's signature manifest: a referrer of subject
// whose one layer is the envelope.
func NotationManifest(env []byte, envType string, subject Descriptor) (manifest []byte, blobs [][]byte) {
	m := map[string]any{
		"schemaVersion": 2,
		"mediaType":     ocispec.MediaTypeImageManifest,
		"artifactType":  sigpolicy.ArtifactTypeNotation,
		"config":        Of(mediaTypeEmpty, emptyConfig),
		"layers":        []any{Of(envType, env)},
		"subject":       subject,
	}
	b, _ := json.Marshal(m)
	return b, [][]byte{emptyConfig, env}
}
