// Package sigpolicy decides whether a manifest carries a valid signature
// under a policy: a cosign signature made with one of the policy's keys,
// or a notation signature chaining to one of its certificates. It knows
// nothing of HTTP or storage: the registry hands it a Source that reads
// the signature manifests and blobs of one repository.
package sigpolicy

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/notaryproject/notation-go"
	"github.com/opencontainers/go-digest"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/internal/configfile"
)

// Media and artifact types of the signatures looked for.
const (
	// ArtifactTypeCosign is the artifactType of a cosign signature pushed
	// as an OCI 1.1 referrer.
	ArtifactTypeCosign = "application/vnd.dev.cosign.artifact.sig.v1+json"
	// MediaTypeCosignPayload is the layer of a cosign signature: the
	// simple-signing payload the signature is over.
	MediaTypeCosignPayload = "application/vnd.dev.cosign.simplesigning.v1+json"
	// AnnotationCosignSignature holds a cosign layer's signature, base64.
	AnnotationCosignSignature = "dev.cosignproject.cosign/signature"
	// ArtifactTypeNotation marks a notation signature manifest.
	ArtifactTypeNotation = "application/vnd.cncf.notary.signature"
	// MediaTypeJWS and MediaTypeCOSE are notation's envelopes.
	MediaTypeJWS  = "application/jose+json"
	MediaTypeCOSE = "application/cose"
	// annotationCosignCertificate holds the signer's certificate of a
	// keyless cosign signature.
	annotationCosignCertificate = "dev.sigstore.cosign/certificate"
	// mediaTypeDSSE is a cosign attestation's layer: not runnable either.
	mediaTypeDSSE = "application/vnd.dsse.envelope.v1+json"
)

// MaxCandidates bounds how many signature manifests one check reads: a
// repository cannot make a pull do unbounded work by piling up referrers.
const MaxCandidates = 16

// MaxBlobSize bounds a signature layer (payload or envelope).
const MaxBlobSize = 1 << 20

// MaxLayers bounds the signature layers of one cosign signature manifest
// a check reads (MaxBlobSize each) and verifies with every key: cosign
// appends a layer per signature under its tag, rarely many, while a
// manifest pushed to pile them up could hold thousands. The newest (the
// last) are the ones read.
const MaxLayers = 32

// Config is one policy as configured.
type Config struct {
	// Match is a repository pattern over internal names (`*` one
	// component, `**` any number).
	Match string
	// CosignKeys are PEM public key files.
	CosignKeys []string
	// NotationCerts are PEM certificate files (each may hold several).
	NotationCerts []string
	// PerPlatform lets an unsigned index through; its platform manifests
	// are then checked each on its own pull.
	PerPlatform bool
}

// Policy is a loaded Config.
type Policy struct {
	match       string
	pattern     authscope.Pattern // match, spelled out once
	perPlatform bool
	cosign      []signature.Verifier
	notation    notation.Verifier
	failed      failedSigs
	passed      passedSigs
}

// New loads c's key and certificate files. An unreadable or invalid file
// is an error naming it.
func New(c Config) (*Policy, error) {
	pattern, err := authscope.CompilePattern(c.Match)
	if err != nil {
		return nil, err
	}
	if len(c.CosignKeys) == 0 && len(c.NotationCerts) == 0 {
		return nil, fmt.Errorf("policy %s: no cosign_key and no notation_cert: nothing could ever pass", c.Match)
	}
	p := &Policy{match: c.Match, pattern: pattern, perPlatform: c.PerPlatform}
	for _, f := range c.CosignKeys {
		b, err := configfile.Read(f)
		if err != nil {
			return nil, fmt.Errorf("cosign_key: %w", err)
		}
		if blk, _ := pem.Decode(b); blk != nil && blk.Type == "CERTIFICATE" {
			// A Fulcio root or a signer's certificate: what keyless
			// verification starts from, which this policy cannot do.
			return nil, fmt.Errorf("cosign_key %s: a certificate, not a public key: %w", f, ErrKeyless)
		}
		pub, err := cryptoutils.UnmarshalPEMToPublicKey(b)
		if err != nil {
			return nil, fmt.Errorf("cosign_key %s: not a PEM public key: %w", f, err)
		}
		// cosign signs the SHA-256 of the payload whatever the key.
		v, err := signature.LoadVerifier(pub, crypto.SHA256)
		if err != nil {
			return nil, fmt.Errorf("cosign_key %s: %w", f, err)
		}
		p.cosign = append(p.cosign, v)
	}
	var certs []*x509.Certificate
	for _, f := range c.NotationCerts {
		b, err := configfile.Read(f)
		if err != nil {
			return nil, fmt.Errorf("notation_cert: %w", err)
		}
		cs, err := parseCerts(b)
		if err != nil {
			return nil, fmt.Errorf("notation_cert %s: %w", f, err)
		}
		certs = append(certs, cs...)
	}
	if len(certs) > 0 {
		v, err := newNotationVerifier(certs)
		if err != nil {
			return nil, fmt.Errorf("notation_cert: %w", err)
		}
		p.notation = v
	}
	return p, nil
}

func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate in the file")
	}
	return certs, nil
}

// ErrKeyless: keyless cosign is not verified here. It needs the Fulcio
// certificate chain, its SCT and Rekor's inclusion proof checked against
// roots and an identity and issuer the operator names; a key pair's
// public key is what cosign_key takes.
var ErrKeyless = errors.New("keyless cosign (Fulcio certificates, Rekor) is not supported; use the public key of a key pair (cosign generate-key-pair), or notation_cert for certificate chains")

// Name is the policy's pattern: what a refusal names (never a key).
func (p *Policy) Name() string { return p.match }

// Matches reports whether internal name repo falls under p.
func (p *Policy) Matches(repo string) bool { return p.pattern.Match(repo) }

// PerPlatform: see Config.PerPlatform.
func (p *Policy) PerPlatform() bool { return p.perPlatform }

// Subject is the manifest being pulled.
type Subject struct {
	Repo      string // internal name
	Digest    string // "sha256:..."
	MediaType string
	Size      int64
}

// Source reads the signature material of one repository.
type Source interface {
	// Candidates returns the manifests that may sign d. It reads prefer
	// first (unless ""), if that is still one of them. Then it lists
	// the others (the one under cosign's tag, CosignTag, first, then
	// d's referrers that claim to be signatures; walking at most
	// MaxListed referrers), lets pick choose which to read and in what
	// order, and returns those it could read. A repository may hold any
	// number of referrers: the walk is bounded by MaxListed, what is
	// read by pick.
	Candidates(ctx context.Context, d, prefer string, pick func(listed []string) []string) ([]Candidate, error)
	// Blob returns blob d whole (at most MaxBlobSize bytes).
	Blob(ctx context.Context, d string) ([]byte, error)
}

// Candidate is a manifest that may sign a subject.
type Candidate struct {
	Digest string
	Body   []byte
}

// MaxListed bounds how many referrers of one subject a check walks to
// find MaxCandidates it has not seen fail.
const MaxListed = 1024

// CosignTag is the tag under which cosign stores the signature of d
// ("sha256-<hex>.sig").
func CosignTag(d string) string { return strings.Replace(d, ":", "-", 1) + ".sig" }

// ErrUnsigned: no valid signature of the subject under the policy.
var ErrUnsigned = errors.New("no valid signature")

// Verify returns nil when one candidate is a valid signature of s under
// p, else an error wrapping ErrUnsigned that says why each candidate
// failed (for the log: it may name keys' failures, not keys).
//
// now is the caller's clock: what a check remembers of the candidates it
// read (which passed, which failed) is kept by it.
func (p *Policy) Verify(ctx context.Context, src Source, s Subject, now time.Time) error {
	skipped := 0
	good, _ := p.passed.get(s.Digest, now)
	budget := MaxCandidates
	if good != "" {
		budget-- // the Source reads good first
	}
	cands, err := src.Candidates(ctx, s.Digest, good, func(listed []string) []string {
		var read []string
		for _, c := range listed {
			switch {
			case len(read) == budget:
				return read
			case c == good || slices.Contains(read, c):
			case p.failed.has(c, s.Digest, now):
				skipped++
			default:
				read = append(read, c)
			}
		}
		return read
	})
	if err != nil {
		return fmt.Errorf("%w: reading signatures: %v", ErrUnsigned, err)
	}
	if len(cands) > MaxCandidates {
		cands = cands[:MaxCandidates]
	}
	var why []string
	for _, c := range cands {
		notation, err := p.verifyOne(ctx, src, s, c.Body)
		if err == nil {
			p.passed.put(s.Digest, c.Digest, now.Add(passedTTL), now)
			return nil
		}
		if !errors.Is(err, errUnread) {
			ttl := cosignFailTTL
			if notation {
				ttl = notationFailTTL
			}
			p.failed.put(c.Digest, s.Digest, now.Add(ttl), now)
		}
		why = append(why, err.Error())
	}
	if skipped > 0 {
		why = append(why, fmt.Sprintf("%d signature manifests that failed before passed over", skipped))
	}
	if len(why) == 0 {
		return fmt.Errorf("%w: no signature found", ErrUnsigned)
	}
	return fmt.Errorf("%w: %s", ErrUnsigned, strings.Join(why, "; "))
}

// sigManifest is the part of a signature manifest read here.
type sigManifest struct {
	ArtifactType string `json:"artifactType"`
	Config       struct {
		MediaType string `json:"mediaType"`
	} `json:"config"`
	Layers []layer `json:"layers"`
}

type layer struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations"`
}

// verifyOne verifies one candidate; notation says whether it was
// checked as a notation signature.
func (p *Policy) verifyOne(ctx context.Context, src Source, s Subject, body []byte) (notation bool, err error) {
	var m sigManifest
	if err := json.Unmarshal(body, &m); err != nil {
		return false, fmt.Errorf("signature manifest unreadable: %w", err)
	}
	if m.ArtifactType == ArtifactTypeNotation || m.Config.MediaType == ArtifactTypeNotation {
		return true, p.verifyNotation(ctx, src, s, m)
	}
	return false, p.verifyCosign(ctx, src, s, m)
}

// blob reads l's bytes and checks them against l's digest and size, so a
// Source that returns other bytes fails the check rather than passing it.
func blob(ctx context.Context, src Source, l layer) ([]byte, error) {
	d, err := digest.Parse(l.Digest)
	if err != nil {
		return nil, fmt.Errorf("layer digest %q: %w", l.Digest, err)
	}
	if l.Size > MaxBlobSize {
		return nil, fmt.Errorf("layer %s: %d bytes is too large for a signature", l.Digest, l.Size)
	}
	b, err := src.Blob(ctx, l.Digest)
	if err != nil {
		return nil, unreadError{fmt.Errorf("layer %s: %w", l.Digest, err)}
	}
	if int64(len(b)) != l.Size || !d.Algorithm().Available() || d.Algorithm().FromBytes(b) != d {
		return nil, fmt.Errorf("layer %s: bytes do not match the descriptor", l.Digest)
	}
	return b, nil
}

// cosignPayload is the part of a simple-signing payload checked here.
type cosignPayload struct {
	Critical struct {
		Image struct {
			DockerManifestDigest string `json:"docker-manifest-digest"`
		} `json:"image"`
	} `json:"critical"`
}

// verifyCosign passes when a layer's signature verifies with one of the
// keys over the layer's bytes, and that payload names s's digest: a valid
// signature of another image does not pass. Only the last MaxLayers
// signature layers are read.
func (p *Policy) verifyCosign(ctx context.Context, src Source, s Subject, m sigManifest) error {
	if len(p.cosign) == 0 {
		return errors.New("cosign signature, and the policy has no cosign_key")
	}
	var why []string
	var unread error
	read := 0
	for i := len(m.Layers) - 1; i >= 0 && read < MaxLayers; i-- {
		l := m.Layers[i]
		sig64, ok := l.Annotations[AnnotationCosignSignature]
		if !ok {
			continue
		}
		read++
		sig, err := decodeBase64(sig64)
		if err != nil {
			why = append(why, "cosign signature is not base64")
			continue
		}
		payload, err := blob(ctx, src, l)
		if err != nil {
			if errors.Is(err, errUnread) {
				unread = err
			}
			why = append(why, err.Error())
			continue
		}
		verified := false
		for _, v := range p.cosign {
			if v.VerifySignature(bytes.NewReader(sig), bytes.NewReader(payload)) == nil {
				verified = true
				break
			}
		}
		if !verified {
			if l.Annotations[annotationCosignCertificate] != "" {
				why = append(why, "keyless cosign signature (a Fulcio certificate): not supported, only cosign_key signatures are")
				continue
			}
			why = append(why, "cosign signature does not verify with any configured key")
			continue
		}
		var pl cosignPayload
		if err := json.Unmarshal(payload, &pl); err != nil {
			why = append(why, "cosign payload unreadable")
			continue
		}
		if pl.Critical.Image.DockerManifestDigest != s.Digest {
			why = append(why, fmt.Sprintf("cosign signature is of %q, not of this manifest", pl.Critical.Image.DockerManifestDigest))
			continue
		}
		return nil
	}
	if len(why) == 0 {
		return errors.New("no cosign signature layer")
	}
	if unread != nil {
		return unreadError{errors.New(strings.Join(why, "; "))}
	}
	return errors.New(strings.Join(why, "; "))
}

// IsSignature reports whether a manifest with these layer media types is
// signature material (cosign's payloads, notation's envelopes, DSSE
// attestations): nothing a runtime can run, and what a client reads to
// verify, so a policy does not require it to be signed itself.
func IsSignature(layerTypes []string) bool {
	if len(layerTypes) == 0 {
		return false
	}
	for _, t := range layerTypes {
		switch t {
		case MediaTypeCosignPayload, MediaTypeJWS, MediaTypeCOSE, mediaTypeDSSE:
		default:
			return false
		}
	}
	return true
}
