package mirrorsync_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/registry"
	"github.com/caddy-oci/caddy-oci/registry/mirrorsync"
	"github.com/caddy-oci/caddy-oci/registry/sigpolicy"
	"github.com/caddy-oci/caddy-oci/registry/sigpolicy/sigtest"
)

// signIndex pushes a cosign signature (cosign's tag form) of the index
// s seeded in repo to the upstream.
func signIndex(t *testing.T, up *upstreamRegistry, repo string, key *sigtest.CosignKey, s seeded) {
	t.Helper()
	payload := sigtest.CosignPayload(repo, s.index.String())
	sig, err := key.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	m, blobs := sigtest.CosignManifest(payload, sig, nil)
	send := func(method, url, ct string, body []byte) {
		req, _ := http.NewRequest(method, url, bytes.NewReader(body))
		req.Header.Set("Content-Type", ct)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("%s %s: %d", method, url, resp.StatusCode)
		}
	}
	for _, b := range blobs {
		send(http.MethodPost, up.push.URL+"/v2/"+repo+"/blobs/uploads/?digest="+sigtest.Of("", b).Digest, "application/octet-stream", b)
	}
	send(http.MethodPut, up.push.URL+"/v2/"+repo+"/manifests/"+sigpolicy.CosignTag(s.index.String()), "application/vnd.oci.image.manifest.v1+json", m)
}

// A sync into a name under require_signature stores only what passes:
// an unsigned tag is skipped (counted, logged) before its manifest is
// stored or anything it references is fetched; a signed one is copied
// with its signature, so that pulls of it pass.
func TestSyncSkipsUnsigned(t *testing.T) {
	key, err := sigtest.NewCosignKey()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "cosign.pub")
	if err := os.WriteFile(keyFile, key.PublicPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	var policies []*sigpolicy.Policy
	for _, match := range []string{"up.test/**", "copies/**"} {
		p, err := sigpolicy.New(sigpolicy.Config{Match: match, CosignKeys: []string{keyFile}})
		if err != nil {
			t.Fatal(err)
		}
		policies = append(policies, p)
	}
	up := newUpstream(t)
	signed := up.pushIndex("lib/app", "signed")
	signIndex(t, up, "lib/app", key, signed)
	unsigned := up.pushIndex("lib/app", "unsigned")

	store, err := cache.Open(cache.Options{Dir: t.TempDir(), Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	m, err := registry.NewMirror(registry.MirrorConfig{Prefix: "up.test", Upstreams: []string{up.srv.URL}})
	if err != nil {
		t.Fatal(err)
	}
	h, err := registry.NewHandler(registry.Config{Store: store, Mirrors: []*registry.Mirror{m}, SignaturePolicies: policies, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	into, err := registry.NewCopySource("copies/hub", registry.MirrorConfig{Upstreams: []string{up.srv.URL}})
	if err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		src  mirrorsync.Source
		repo string
	}{{h.SyncSource(m), "up.test/lib/app"}, {h.SyncSource(into), "copies/hub/lib/app"}} {
		up.reset()
		s := newSync(t, c.src, mirrorsync.Content{Repository: "lib/app", Platforms: []string{"linux/amd64"}})
		st := s.Run(context.Background())
		if st.ErrorCount != 0 || st.SkippedUnsigned != 1 {
			t.Fatalf("%s: run %+v, want no error and one skipped", c.repo, st)
		}
		if got := s.Status().LastRun.SkippedUnsigned; got != 1 {
			t.Errorf("%s: status says %d skipped", c.repo, got)
		}
		// Nothing of the unsigned image was stored or fetched beyond
		// the one manifest GET that tells what the tag is.
		if _, _, err := store.GetManifest(context.Background(), c.repo, mustDigest(t, unsigned.index.String())); !errors.Is(err, cache.ErrManifestUnknown) {
			t.Errorf("%s: unsigned index stored (%v)", c.repo, err)
		}
		if _, err := store.ResolveTag(context.Background(), c.repo, "unsigned"); err == nil {
			t.Errorf("%s: unsigned tag stored", c.repo)
		}
		img := unsigned.images["linux/amd64"]
		d, _ := img.Digest()
		cd, _ := img.ConfigName()
		for _, f := range fetches(up.requests()) {
			if strings.Contains(f, d.String()) || strings.Contains(f, cd.String()) {
				t.Errorf("%s: fetched %s of the unsigned image", c.repo, f)
			}
		}
		// The signed one is there whole, and its pull passes.
		sd, _ := signed.images["linux/amd64"].Digest()
		for _, want := range []string{signed.index.String(), sd.String()} {
			if _, _, err := store.GetManifest(context.Background(), c.repo, mustDigest(t, want)); err != nil {
				t.Errorf("%s: %s not stored: %v", c.repo, want, err)
			}
		}
		scd, _ := signed.images["linux/amd64"].ConfigName()
		if _, err := store.HasBlob(context.Background(), c.repo, mustDigest(t, scd.String())); err != nil {
			t.Errorf("%s: signed image's config not stored: %v", c.repo, err)
		}
	}
	// The status document carries the count.
	b, _ := json.Marshal(mirrorsync.RunStats{SkippedUnsigned: 1})
	if !strings.Contains(string(b), `"skipped_unsigned":1`) {
		t.Errorf("status JSON: %s", b)
	}
}

func mustDigest(t *testing.T, s string) cache.Digest {
	t.Helper()
	d, err := cache.ParseDigest(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestSyncIntoSignedUpstreamDownMidRun: under a signature policy too, a
// sync_into run that the upstream leaves midway sets no tag whose content
// is partly missing; the next run sets it whole.
func TestSyncIntoSignedUpstreamDownMidRun(t *testing.T) {
	ctx := context.Background()
	key, err := sigtest.NewCosignKey()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "cosign.pub")
	if err := os.WriteFile(keyFile, key.PublicPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := sigpolicy.New(sigpolicy.Config{Match: "copies/**", CosignKeys: []string{keyFile}})
	if err != nil {
		t.Fatal(err)
	}
	for _, after := range []int{4, 7} {
		up := newUpstream(t)
		signed := up.pushIndex("lib/app", "signed")
		signIndex(t, up, "lib/app", key, signed)
		store, err := cache.Open(cache.Options{Dir: t.TempDir(), Logger: zaptest.NewLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = store.Close() })
		h, err := registry.NewHandler(registry.Config{Store: store, SignaturePolicies: []*sigpolicy.Policy{p}, Logger: zaptest.NewLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		into, err := registry.NewCopySource("copies/hub", registry.MirrorConfig{Upstreams: []string{up.srv.URL}, MaxRetries: -1})
		if err != nil {
			t.Fatal(err)
		}
		s := newSync(t, h.SyncSource(into), mirrorsync.Content{Repository: "lib/app", Tags: "^signed$"})
		whole := func(when string) bool {
			if _, err := store.ResolveTag(ctx, "copies/hub/lib/app", "signed"); err != nil {
				return false
			}
			for pl, img := range signed.images {
				md, _ := img.Digest()
				cd, _ := img.ConfigName()
				if _, _, err := store.GetManifest(ctx, "copies/hub/lib/app", mustDigest(t, md.String())); err != nil {
					t.Errorf("down after %d, %s: tag set, its %s manifest: %v", after, when, pl, err)
				} else if _, err := store.HasBlob(ctx, "copies/hub/lib/app", mustDigest(t, cd.String())); err != nil {
					t.Errorf("down after %d, %s: tag set, the config of its %s image: %v", after, when, pl, err)
				}
			}
			return true
		}
		up.mu.Lock()
		up.downAfter = after
		up.mu.Unlock()
		st := s.Run(ctx)
		t.Logf("upstream down after %d requests: %d errors, tag set: %v", after, st.ErrorCount, whole("after the failed run"))
		up.mu.Lock()
		up.down, up.downAfter = false, 0
		up.mu.Unlock()
		// A refusal while the upstream was down is kept 2 s (sigFailTTL):
		// the operator's next run, a little later, gets through.
		deadline := time.Now().Add(30 * time.Second)
		for {
			st := s.Run(ctx)
			if st.ErrorCount == 0 && st.Tags == 1 && st.SkippedUnsigned == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("down after %d: the runs after: %+v", after, st)
			}
			time.Sleep(500 * time.Millisecond)
		}
		if !whole("after the next run") {
			t.Errorf("down after %d: tag not set after the next run", after)
		}
	}
}
