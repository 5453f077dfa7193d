package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// TestListModules checks that list-modules shows each module the README's
// list-modules line says it does.
func TestListModules(t *testing.T) {
	needBinary(t)
	b, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var claimed []string
	for _, line := range strings.Split(string(b), "\n") {
		if cmd, comment, ok := strings.Cut(line, "#"); ok && strings.Contains(cmd, "list-modules") {
			for _, m := range strings.Split(comment, ",") {
				claimed = append(claimed, strings.TrimSpace(m))
			}
		}
	}
	if !slices.Contains(claimed, "http.handlers.oci_registry") || !slices.Contains(claimed, "http.handlers.oci_front") {
		t.Fatalf("README's list-modules line names %q; want the registry and the front among them", claimed)
	}
	out := run(t, nil, caddyBin, "list-modules")
	if !slices.Contains(claimed, "caddy.adapters.zot") {
		t.Errorf("README's list-modules line names %q; want the zot adapter too", claimed)
	}
	for _, want := range claimed {
		found := false
		for _, line := range strings.Split(out, "\n") {
			if strings.TrimSpace(line) == want {
				found = true
			}
		}
		if !found {
			t.Errorf("list-modules lacks %s:\n%s", want, out)
		}
	}
}

// writeImage pushes img as ref (host/repo:tag, plain HTTP) with
// go-containerregistry.
func writeImage(t testing.TB, ref string, img v1.Image) {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
}

// ociImage is a random image with OCI media types throughout, so no client
// has a reason to convert it and every copy keeps its digest.
func ociImage(t *testing.T) v1.Image {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for i, size := range []int64{1 << 20, 3 << 20, 17} {
		l, err := random.Layer(size, types.OCILayer)
		if err != nil {
			t.Fatal(err)
		}
		img, err = mutate.Append(img, mutate.Addendum{Layer: l, History: v1.History{CreatedBy: "layer " + string(rune('a'+i))}})
		if err != nil {
			t.Fatal(err)
		}
	}
	return img
}

// writeLayout writes img to a new OCI image layout and returns its folder.
func writeLayout(t *testing.T, img v1.Image) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	return dir
}

// newLayout writes a fresh ociImage to a new OCI image layout and
// returns the layout's folder and the image's manifest digest.
func newLayout(t *testing.T) (dir, digest string) {
	t.Helper()
	img := ociImage(t)
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return writeLayout(t, img), d.String()
}

// layoutDigest reads the manifest digest an OCI image layout holds.
func layoutDigest(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	var idx struct {
		Manifests []struct {
			Digest string `json:"digest"`
		} `json:"manifests"`
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		t.Fatalf("index.json: %v\n%s", err, b)
	}
	if len(idx.Manifests) != 1 {
		t.Fatalf("index.json holds %d manifests, want 1:\n%s", len(idx.Manifests), b)
	}
	return idx.Manifests[0].Digest
}

// checkLayout checks that every blob the image references sits in the
// layout, byte for byte (the layout names blobs by digest; the file must
// hash to it).
func checkLayout(t *testing.T, dir string, img v1.Image) {
	t.Helper()
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	want := []v1.Hash{cfg}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, d)
	}
	for _, d := range want {
		f, err := os.Open(filepath.Join(dir, "blobs", d.Algorithm, d.Hex))
		if err != nil {
			t.Errorf("layout lacks blob %s: %v", d, err)
			continue
		}
		got, _, err := v1.SHA256(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if got != d {
			t.Errorf("blob %s in layout hashes to %s", d, got)
		}
	}
}

// TestClients pushes and pulls with the clients people use, against the
// binary serving Caddyfile.example, and runs `caddy validate` on the same
// config while it serves.
func TestClients(t *testing.T) {
	crane := tool(t, "crane")
	s := newServer(t, t.TempDir())

	img := ociImage(t)
	want, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	ref := s.addr + "/e2e/random:v1"
	// An OCI layout, not a docker tarball: crane pushes a tarball with
	// Docker media types, which skopeo would then convert on its way into
	// an OCI layout, and digests would no longer compare.
	src := writeLayout(t, img)

	t.Run("crane push", func(t *testing.T) {
		out := run(t, nil, crane, "push", "--insecure", src, ref)
		if !strings.Contains(out, want.String()) {
			t.Errorf("crane push printed %q, want the digest %s", out, want)
		}
		if got := strings.TrimSpace(run(t, nil, crane, "digest", "--insecure", ref)); got != want.String() {
			t.Errorf("crane digest = %s, want %s", got, want)
		}
		raw := run(t, nil, crane, "manifest", "--insecure", ref)
		wantRaw, err := img.RawManifest()
		if err != nil {
			t.Fatal(err)
		}
		if raw != string(wantRaw) {
			t.Errorf("manifest bytes differ:\n got %s\nwant %s", raw, wantRaw)
		}
	})
	if t.Failed() {
		return
	}

	t.Run("crane pull", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "layout")
		run(t, nil, crane, "pull", "--insecure", "--format", "oci", ref, dir)
		if got := layoutDigest(t, dir); got != want.String() {
			t.Errorf("crane pulled %s, want %s", got, want)
		}
		checkLayout(t, dir, img)
	})

	t.Run("skopeo", func(t *testing.T) {
		skopeo := tool(t, "skopeo")
		dir := filepath.Join(t.TempDir(), "layout")
		run(t, nil, skopeo, "copy", "--src-tls-verify=false", "docker://"+ref, "oci:"+dir+":v1")
		if got := layoutDigest(t, dir); got != want.String() {
			t.Errorf("skopeo pulled %s, want %s", got, want)
		}
		checkLayout(t, dir, img)

		// And back, into another repository: skopeo pushes with
		// POST + PATCH + PUT, crane with a monolithic PUT.
		ref2 := s.addr + "/e2e/skopeo-pushed:v1"
		run(t, nil, skopeo, "copy", "--dest-tls-verify=false", "oci:"+dir+":v1", "docker://"+ref2)
		if got := strings.TrimSpace(run(t, nil, crane, "digest", "--insecure", ref2)); got != want.String() {
			t.Errorf("after skopeo push: digest %s, want %s", got, want)
		}
	})

	t.Run("podman", func(t *testing.T) {
		// An empty registries.conf: no mirrors, no search registries.
		conf := filepath.Join(t.TempDir(), "registries.conf")
		if err := os.WriteFile(conf, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		got := podmanPull(t, []string{"CONTAINERS_REGISTRIES_CONF=" + conf}, ref, "--tls-verify=false")
		if got != want.String() {
			t.Errorf("podman pulled %s, want %s", got, want)
		}
	})

	t.Run("validate while running", func(t *testing.T) {
		out := run(t, nil, caddyBin, "validate", "--config", s.config, "--adapter", "caddyfile")
		if !strings.Contains(out, "Valid configuration") {
			t.Errorf("validate output:\n%s", out)
		}
		// The example itself too (its storage folder is another one, but
		// validation must not open either).
		out = run(t, nil, caddyBin, "validate", "--config", filepath.Join(repoRoot, "Caddyfile.example"), "--adapter", "caddyfile")
		if !strings.Contains(out, "Valid configuration") {
			t.Errorf("validate Caddyfile.example:\n%s", out)
		}
		// The running server still serves the image.
		if got := strings.TrimSpace(run(t, nil, crane, "digest", "--insecure", ref)); got != want.String() {
			t.Errorf("after validate: digest %s, want %s", got, want)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		resp, err := http.Get("http://" + s.admin + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range []string{
			"caddy_oci_requests_total{", "caddy_oci_request_duration_seconds_bucket{",
			"caddy_oci_bytes_received_total ", "caddy_oci_bytes_sent_total ",
			"caddy_oci_uploads_total ", "caddy_oci_upload_bytes_total ",
		} {
			if !strings.Contains(string(b), m) {
				t.Errorf("/metrics lacks %s", m)
			}
		}
	})
}
