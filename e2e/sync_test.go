package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// syncedTag is one multi-platform tag pushed upstream.
type syncedTag struct {
	index    string
	children map[string]string // platform "os/arch" -> manifest digest
}

// pushPlatformIndex pushes an index of linux/amd64, linux/arm64 and
// linux/s390x images to repo:tag.
func (u *upstream) pushPlatformIndex(t *testing.T, repoTag string) syncedTag {
	return u.pushIndexOf(t, repoTag, ociImage)
}

// pushIndexOf pushes to repo:tag an index of three images image makes,
// one each for linux/amd64, linux/arm64 and linux/s390x.
func (u *upstream) pushIndexOf(t *testing.T, repoTag string, image func(*testing.T) v1.Image) syncedTag {
	t.Helper()
	st := syncedTag{children: map[string]string{}}
	var idx v1.ImageIndex = empty.Index
	for _, arch := range []string{"amd64", "arm64", "s390x"} {
		img := image(t)
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture = "linux", arch
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			t.Fatal(err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
		d, _ := img.Digest()
		st.children["linux/"+arch] = d.String()
	}
	ref, err := name.ParseReference(strings.TrimPrefix(u.URL, "http://")+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	d, _ := idx.Digest()
	st.index = d.String()
	return st
}

// fetches are the upstream's GETs of manifests and blobs.
func (u *upstream) fetches() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []string
	for _, p := range u.paths {
		if strings.HasPrefix(p, "GET ") && (strings.Contains(p, "/manifests/") || strings.Contains(p, "/blobs/")) {
			out = append(out, strings.TrimPrefix(p, "GET "))
		}
	}
	return out
}

func (u *upstream) reset() {
	u.mu.Lock()
	u.paths = nil
	u.mu.Unlock()
}

// TestSyncAcceptance is issue 12's acceptance: a scheduled sync of a
// semver range, two platforms and the newest 3 tags prefetches exactly
// that from a loopback upstream, and pulls of those tags afterwards by
// podman, containerd and crane make no upstream GET of a blob or
// manifest.
func TestSyncAcceptance(t *testing.T) {
	up := newUpstream(t)
	tags := map[string]syncedTag{}
	for _, tag := range []string{"1.0.0", "1.1.0", "1.2.0", "1.3.0", "2.0.0", "edge"} {
		tags[tag] = up.pushPlatformIndex(t, "library/app:"+tag)
	}
	up.reset()

	dataDir := t.TempDir()
	s := siteServer(t, dataDir, fmt.Sprintf(`	oci_registry {
		storage %s
		mirror docker.io {
			upstream %s
			sync {
				every 24h
				content library/app {
					semver >=1 <2
					platforms linux/amd64 linux/arm64
					latest 3
				}
			}
		}
	}`, strconv.Quote(dataDir), up.URL), 0)
	m := s.localhostAddr()

	// A run now, as an operator would ask (loopback, no auth here).
	resp, err := http.Post("http://"+m+"/_oci/sync", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /_oci/sync: %s", resp.Status)
	}
	var status struct {
		Syncs []struct {
			Name    string     `json:"name"`
			LastEnd *time.Time `json:"last_end"`
			LastRun *struct {
				Tags             int      `json:"tags"`
				ManifestsFetched int      `json:"manifests_fetched"`
				BlobsFetched     int      `json:"blobs_fetched"`
				ErrorCount       int      `json:"error_count"`
				Errors           []string `json:"errors"`
			} `json:"last_run"`
		} `json:"syncs"`
	}
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := http.Get("http://" + m + "/_oci/sync")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err := json.Unmarshal(body, &status); err != nil {
			t.Fatalf("status %s: %v", body, err)
		}
		if len(status.Syncs) == 1 && status.Syncs[0].LastEnd != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no run ended: %s", body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	last := status.Syncs[0].LastRun
	if last == nil || last.ErrorCount != 0 || last.Tags != 3 || last.ManifestsFetched != 9 || last.BlobsFetched != 6*4 {
		t.Fatalf("run: %+v", last)
	}
	// Exactly the selection: three indexes by tag, two children each,
	// their configs and layers; nothing of 1.0.0, 2.0.0, edge or s390x.
	var want []string
	for _, tag := range []string{"1.1.0", "1.2.0", "1.3.0"} {
		want = append(want, "/v2/library/app/manifests/"+tag,
			"/v2/library/app/manifests/"+tags[tag].children["linux/amd64"],
			"/v2/library/app/manifests/"+tags[tag].children["linux/arm64"])
	}
	var gotManifests []string
	for _, f := range up.fetches() {
		if strings.Contains(f, "/manifests/") {
			gotManifests = append(gotManifests, f)
		}
	}
	slices.Sort(want)
	slices.Sort(gotManifests)
	if !slices.Equal(gotManifests, want) {
		t.Errorf("manifest GETs upstream:\n got %q\nwant %q", gotManifests, want)
	}
	up.reset()

	t.Run("podman", func(t *testing.T) {
		got := podmanMirrorPull(t, nil, m, "docker.io/library/app:1.3.0")
		if got != tags["1.3.0"].index && got != tags["1.3.0"].children["linux/amd64"] {
			t.Errorf("podman pulled %s, want %s", got, tags["1.3.0"].index)
		}
	})
	t.Run("containerd", func(t *testing.T) {
		c := startContainerd(t)
		dir := t.TempDir()
		writeHostsToml(t, dir, "docker.io", fmt.Sprintf("server = \"https://registry-1.docker.io\"\n\n[host.\"http://%s/docker.io\"]\n  capabilities = [\"pull\", \"resolve\"]\n", m))
		if got := c.pull(t, "sync", dir, "docker.io/library/app:1.2.0", "--snapshotter", "native", "--platform", "linux/arm64"); got != tags["1.2.0"].index {
			t.Errorf("containerd pulled %s, want %s", got, tags["1.2.0"].index)
		}
	})
	t.Run("crane", func(t *testing.T) {
		crane := tool(t, "crane")
		dir := filepath.Join(t.TempDir(), "layout")
		run(t, nil, crane, "pull", "--insecure", "--platform", "linux/arm64", "--format", "oci", m+"/docker.io/library/app:1.1.0", dir)
		if got := layoutDigest(t, dir); got != tags["1.1.0"].children["linux/arm64"] {
			t.Errorf("crane pulled %s, want %s", got, tags["1.1.0"].children["linux/arm64"])
		}
	})
	if f := up.fetches(); len(f) != 0 {
		t.Errorf("pulls after sync fetched from upstream: %q", f)
	}
}
