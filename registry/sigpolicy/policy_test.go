package sigpolicy_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/registry/sigpolicy"
	"github.com/caddy-oci/caddy-oci/registry/sigpolicy/sigtest"
)

// memSource holds one repository's signature material in memory.
type memSource struct {
	cands [][]byte
	blobs map[string][]byte
}

func (m memSource) Candidates(_ context.Context, _, _ string, pick func([]string) []string) ([]sigpolicy.Candidate, error) {
	byDigest := map[string][]byte{}
	var listed []string
	for _, b := range m.cands {
		d := sigtest.Of("", b).Digest
		if _, ok := byDigest[d]; !ok {
			listed = append(listed, d)
		}
		byDigest[d] = b
	}
	var out []sigpolicy.Candidate
	for _, d := range pick(listed) {
		out = append(out, sigpolicy.Candidate{Digest: d, Body: byDigest[d]})
	}
	return out, nil
}
func (m memSource) Blob(_ context.Context, d string) ([]byte, error) {
	if b, ok := m.blobs[d]; ok {
		return b, nil
	}
	return nil, errors.New("no such blob")
}

// A keyless cosign signature (a Fulcio certificate in the layer's
// annotations) is refused, and the reason says keyless is unsupported
// rather than that a key did not match.
func TestKeylessSignatureRefusedPlainly(t *testing.T) {
	key, err := sigtest.NewCosignKey()
	if err != nil {
		t.Fatal(err)
	}
	ephemeral, err := sigtest.NewCosignKey() // what Fulcio would certify
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "cosign.pub")
	if err := os.WriteFile(keyFile, key.PublicPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := sigpolicy.New(sigpolicy.Config{Match: "team/**", CosignKeys: []string{keyFile}})
	if err != nil {
		t.Fatal(err)
	}
	subject := sigtest.Of("application/vnd.oci.image.manifest.v1+json", []byte(`{"schemaVersion":2}`))
	payload := sigtest.CosignPayload("team/app", subject.Digest)
	sig, err := ephemeral.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	m, blobs := sigtest.CosignManifest(payload, sig, nil)
	var doc map[string]any
	_ = json.Unmarshal(m, &doc)
	layer := doc["layers"].([]any)[0].(map[string]any)
	layer["annotations"].(map[string]any)["dev.sigstore.cosign/certificate"] = "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n"
	m, _ = json.Marshal(doc)
	src := memSource{cands: [][]byte{m}, blobs: map[string][]byte{}}
	for _, b := range blobs {
		src.blobs[sigtest.Of("", b).Digest] = b
	}
	err = p.Verify(context.Background(), src, sigpolicy.Subject{Repo: "team/app", Digest: subject.Digest, MediaType: subject.MediaType, Size: subject.Size}, time.Now())
	if !errors.Is(err, sigpolicy.ErrUnsigned) || !strings.Contains(err.Error(), "keyless") {
		t.Errorf("keyless signature: %v", err)
	}
}

// countingSource counts the blobs a check reads.
type countingSource struct {
	memSource
	reads *int
}

func (c countingSource) Blob(ctx context.Context, d string) ([]byte, error) {
	*c.reads++
	return c.memSource.Blob(ctx, d)
}

// A cosign signature manifest piled with signature layers (each a blob
// read, up to MaxBlobSize, and a verification per key) costs a check at
// most MaxLayers reads per candidate, the newest (last) ones: a valid
// signature appended after many bad ones passes, one buried under
// MaxLayers newer ones is not read.
func TestCosignLayersReadBounded(t *testing.T) {
	key, err := sigtest.NewCosignKey()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "cosign.pub")
	if err := os.WriteFile(keyFile, key.PublicPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := sigpolicy.New(sigpolicy.Config{Match: "team/**", CosignKeys: []string{keyFile}})
	if err != nil {
		t.Fatal(err)
	}
	subject := sigtest.Of("application/vnd.oci.image.manifest.v1+json", []byte(`{"schemaVersion":2}`))
	payload := sigtest.CosignPayload("team/app", subject.Digest)
	sig, err := key.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	m, blobs := sigtest.CosignManifest(payload, sig, nil)
	var doc map[string]any
	_ = json.Unmarshal(m, &doc)
	valid := doc["layers"].([]any)[0]
	var bad []any
	for i := range 1000 {
		l := sigtest.Of(sigpolicy.MediaTypeCosignPayload, []byte(fmt.Sprintf(`{"n":%d}`, i)))
		bad = append(bad, map[string]any{"mediaType": l.MediaType, "digest": l.Digest, "size": l.Size,
			"annotations": map[string]string{sigpolicy.AnnotationCosignSignature: sig}})
	}
	src := memSource{blobs: map[string][]byte{}}
	for _, b := range blobs {
		src.blobs[sigtest.Of("", b).Digest] = b
	}
	s := sigpolicy.Subject{Repo: "team/app", Digest: subject.Digest, MediaType: subject.MediaType, Size: subject.Size}
	for _, tc := range []struct {
		name   string
		layers []any
		pass   bool
	}{
		{"valid newest", append(slices.Clone(bad), valid), true},
		{"valid buried", append([]any{valid}, bad...), false},
		{"valid just within", append([]any{valid}, bad[:sigpolicy.MaxLayers-1]...), true},
	} {
		doc["layers"] = tc.layers
		body, _ := json.Marshal(doc)
		reads := 0
		cands := slices.Repeat([][]byte{body}, sigpolicy.MaxCandidates)
		err := p.Verify(context.Background(), countingSource{memSource{cands: cands, blobs: src.blobs}, &reads}, s, time.Now())
		if (err == nil) != tc.pass {
			t.Errorf("%s: %v, want pass %v", tc.name, err, tc.pass)
		}
		if reads > sigpolicy.MaxCandidates*sigpolicy.MaxLayers {
			t.Errorf("%s: %d blob reads, want at most %d", tc.name, reads, sigpolicy.MaxCandidates*sigpolicy.MaxLayers)
		}
	}
}
