package e2e

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// TestMirrorPrefetchClients pulls an image with crane and skopeo through
// the built binary's mirror with `prefetch` on: the images are whole, and
// upstream was asked for each of the image's blobs once (the prefetch's
// GETs, which the clients' own requests joined or found done), with no
// blob HEAD. Then `crane manifest` alone of another image makes the mirror
// fetch its blobs, as the README warns.
func TestMirrorPrefetchClients(t *testing.T) {
	crane := tool(t, "crane")
	skopeo := tool(t, "skopeo")
	up := newUpstream(t)
	dataDir := t.TempDir()
	s := siteServer(t, dataDir, fmt.Sprintf(`	oci_registry {
		storage %s
		mirror docker.io {
			upstream %s
			prefetch
		}
	}`, strconv.Quote(dataDir), up.URL), 0)
	addr := s.localhostAddr()

	img := ociImage(t)
	want := up.push(t, "library/app:v1", img)
	blobs := imageDigests(t, img)
	pushed := len(up.requests())

	dir := filepath.Join(t.TempDir(), "crane")
	run(t, nil, crane, "pull", "--insecure", "--format", "oci", addr+"/docker.io/library/app:v1", dir)
	if got := layoutDigest(t, dir); got != want {
		t.Fatalf("crane pulled %s, want %s", got, want)
	}
	checkLayout(t, dir, img)
	dir = filepath.Join(t.TempDir(), "skopeo")
	run(t, nil, skopeo, "copy", "--src-tls-verify=false", "docker://"+addr+"/docker.io/library/app:v1", "oci:"+dir+":v1")
	checkLayout(t, dir, img)
	asked := up.requests()[pushed:]
	for _, d := range blobs {
		if n := countPrefixSuffix(asked, "GET ", "/blobs/"+d); n != 1 {
			t.Errorf("upstream GETs of blob %s = %d, want 1", d, n)
		}
	}
	if n := countPrefixSuffix(asked, "HEAD ", ""); n != 0 {
		t.Errorf("upstream HEADs = %d during the pulls, want 0: %q", n, asked)
	}

	other := ociImage(t)
	up.push(t, "library/other:v1", other)
	run(t, nil, crane, "manifest", "--insecure", addr+"/docker.io/library/other:v1")
	for _, d := range imageDigests(t, other) {
		waitFor(t, 10*time.Second, "the prefetch of blob "+d, func() bool { return up.asked("/v2/library/other/blobs/" + d) })
	}
}

// imageDigests are img's config and layer digests.
func imageDigests(t *testing.T, img v1.Image) []string {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	out := []string{m.Config.Digest.String()}
	for _, l := range m.Layers {
		out = append(out, l.Digest.String())
	}
	return out
}

// countPrefixSuffix counts the requests ("METHOD /path") that start with
// prefix and end with suffix.
func countPrefixSuffix(requests []string, prefix, suffix string) int {
	n := 0
	for _, r := range requests {
		if strings.HasPrefix(r, prefix) && strings.HasSuffix(r, suffix) {
			n++
		}
	}
	return n
}
