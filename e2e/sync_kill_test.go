package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// pushSmallIndex pushes an index of three small single-layer images to
// repoTag upstream.
func (u *upstream) pushSmallIndex(t *testing.T, repoTag string) {
	u.pushIndexOf(t, repoTag, func(t *testing.T) v1.Image {
		img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
		img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
		l, err := random.Layer(32<<10, types.OCILayer)
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			t.Fatal(err)
		}
		return img
	})
}

// slowProxy passes requests to target, each after a pause.
func slowProxy(t *testing.T, target string, pause time.Duration) *httptest.Server {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(pause)
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// wholeOrAbsent reports an error when repo:tag is visible (200) but what
// it names is not all there and right: each child manifest by digest,
// each config and layer, every digest checked.
func wholeOrAbsent(s *server, repo, tag string) (present bool, err error) {
	get := func(path, accept string) (int, []byte, error) {
		req, _ := http.NewRequest(http.MethodGet, s.url(path), nil)
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := churnClient.Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, b, err
	}
	accept := "application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json"
	st, b, err := get("/v2/"+repo+"/manifests/"+tag, accept)
	if err != nil {
		return false, err
	}
	if st == http.StatusNotFound {
		return false, nil
	}
	if st != http.StatusOK {
		return false, fmt.Errorf("%s:%s: %d", repo, tag, st)
	}
	var idx struct {
		Manifests []struct{ Digest string } `json:"manifests"`
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		return true, err
	}
	for _, c := range idx.Manifests {
		st, mb, err := get("/v2/"+repo+"/manifests/"+c.Digest, accept)
		if err != nil || st != http.StatusOK || blobDigest(mb) != c.Digest {
			return true, fmt.Errorf("%s:%s visible, its child %s: %d, %v", repo, tag, c.Digest, st, err)
		}
		var m struct {
			Config struct{ Digest string }   `json:"config"`
			Layers []struct{ Digest string } `json:"layers"`
		}
		if err := json.Unmarshal(mb, &m); err != nil {
			return true, err
		}
		for _, d := range append([]string{m.Config.Digest}, func() (ds []string) {
			for _, l := range m.Layers {
				ds = append(ds, l.Digest)
			}
			return
		}()...) {
			st, bb, err := get("/v2/"+repo+"/blobs/"+d, "")
			if err != nil || st != http.StatusOK || blobDigest(bb) != d {
				return true, fmt.Errorf("%s:%s visible, blob %s of child %s: %d, %v", repo, tag, d, c.Digest, st, err)
			}
		}
	}
	return true, nil
}

// syncStatus is the part of GET /_oci/sync a drill reads.
type syncStatus struct {
	Syncs []struct {
		Running bool       `json:"running"`
		LastEnd *time.Time `json:"last_end"`
		LastRun *struct {
			Tags       int      `json:"tags"`
			ErrorCount int      `json:"error_count"`
			Errors     []string `json:"errors"`
		} `json:"last_run"`
	} `json:"syncs"`
}

func readSyncStatus(t *testing.T, s *server) syncStatus {
	t.Helper()
	var st syncStatus
	getJSON(t, "http://"+s.localhostAddr()+"/_oci/sync", &st)
	if len(st.Syncs) != 1 {
		t.Fatalf("want one sync in the status, have %+v", st)
	}
	return st
}

// TestSyncIntoKilledMidRun: sync_into copies an upstream's tags into a
// local prefix, which pulls never fill on demand. The process is killed
// (SIGKILL) at random points of runs through a slow upstream; after each
// restart every tag of the prefix is either absent or whole (its index,
// every child, every blob), and a run afterwards fetches the rest: all
// tags whole, no error.
func TestSyncIntoKilledMidRun(t *testing.T) {
	up := newUpstream(t)
	tags := 0
	pushTags := func(n int) {
		for range n {
			up.pushSmallIndex(t, fmt.Sprintf("library/app:v%d", tags))
			tags++
		}
	}
	pushTags(6)
	// Each new tag costs a run 10 GETs upstream (index, three children,
	// three configs, three layers), each held 25 ms by the proxy.
	proxy := slowProxy(t, up.URL, 25*time.Millisecond)
	dataDir := filepath.Join(t.TempDir(), "data")
	s := siteServer(t, dataDir, fmt.Sprintf(`	oci_registry {
		storage %s
		sync_into hub from %s {
			every 24h
			concurrency 4
			content library/app {
				latest 100
			}
		}
	}`, strconv.Quote(dataDir), proxy.URL), 0)

	post := func() {
		t.Helper()
		resp, err := http.Post("http://"+s.localhostAddr()+"/_oci/sync", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted && resp.StatusCode != http.StatusConflict {
			t.Fatalf("POST /_oci/sync: %s", resp.Status)
		}
	}
	check := func(when string) int {
		t.Helper()
		whole := 0
		for i := range tags {
			present, err := wholeOrAbsent(s, "hub/library/app", fmt.Sprintf("v%d", i))
			if err != nil {
				t.Errorf("%s: %v", when, err)
			} else if present {
				whole++
			}
		}
		return whole
	}
	for round := range 4 {
		if round > 0 {
			pushTags(2) // work for this run: at least 20 GETs
		}
		up.reset()
		post()
		// Kill somewhere in the run: after 3 to 18 upstream GETs.
		after := 3 + rand.IntN(16)
		waitFor(t, time.Minute, "upstream GETs of the run", func() bool { return len(up.fetches()) >= after })
		s.kill()
		s.start()
		t.Logf("round %d: killed after %d upstream GETs; %d of %d tags whole", round+1, after, check(fmt.Sprintf("round %d", round+1)), tags)
	}

	post()
	waitFor(t, 2*time.Minute, "a run to end", func() bool {
		st := readSyncStatus(t, s)
		return st.Syncs[0].LastEnd != nil && !st.Syncs[0].Running
	})
	st := readSyncStatus(t, s)
	if lr := st.Syncs[0].LastRun; lr == nil || lr.ErrorCount != 0 || lr.Tags != tags {
		t.Errorf("the run after the kills: %+v", lr)
	}
	if n := check("after a whole run"); n != tags {
		t.Errorf("after a whole run %d of %d tags are there", n, tags)
	}
}
