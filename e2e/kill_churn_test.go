package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// churnImage is a small image pushed with plain HTTP: a config, a layer,
// and its manifest.
type churnImage struct {
	config, layer []byte
	manifest      []byte
	digest        string
}

func newChurnImage(t *testing.T) churnImage {
	t.Helper()
	im := churnImage{config: []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","n":%d}`, rand.Int64())),
		layer: randomBytes(t, 4096+rand.IntN(4096))}
	im.manifest = []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}]}`,
		blobDigest(im.config), len(im.config), blobDigest(im.layer), len(im.layer)))
	im.digest = blobDigest(im.manifest)
	return im
}

// churnClient answers errors as values: the server dies under it.
var churnClient = &http.Client{Timeout: 10 * time.Second}

// churn5xx counts answers of the server's own failure (a killed server
// answers nothing, which is not counted); one sample is kept.
var (
	churn5xx    atomic.Int64
	churnSample atomic.Value
)

func churnDo(method, u string, body []byte, ct string) (int, http.Header) {
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		return 0, nil
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	resp, err := churnClient.Do(req)
	if err != nil {
		return 0, nil
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode >= 500 {
		churn5xx.Add(1)
		churnSample.Store(fmt.Sprintf("%s %s: %s %s", method, u, resp.Status, b))
	}
	return resp.StatusCode, resp.Header
}

const ociManifest = "application/vnd.oci.image.manifest.v1+json"

func (im churnImage) pushBlobs(s *server, repo string) bool {
	for _, b := range [][]byte{im.config, im.layer} {
		if st, _ := churnDo(http.MethodPost, s.url("/v2/"+repo+"/blobs/uploads/?digest="+blobDigest(b)), b, "application/octet-stream"); st != http.StatusCreated {
			return false
		}
	}
	return true
}

func (im churnImage) putManifest(s *server, repo, ref string) bool {
	st, _ := churnDo(http.MethodPut, s.url("/v2/"+repo+"/manifests/"+ref), im.manifest, ociManifest)
	return st == http.StatusCreated
}

// churnLedger is what the server acknowledged, and what it was asked
// after that, per tag and per deleted manifest.
type churnLedger struct {
	mu      sync.Mutex
	tags    map[string]*tagAsks // by repo:tag
	deleted map[string]bool     // repo@digest whose DELETE was acknowledged
}

// tagAsks are the digests a tag was set to since its last acknowledged
// one (that one first, once acked). deleteAsked: a DELETE of its manifest
// was sent and not acknowledged, so the tag may be gone with it (a kill
// can end the request after the delete was committed).
type tagAsks struct {
	asks        []string
	acked       bool
	deleteAsked bool
}

func (l *churnLedger) asked(ref, digest string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ta := l.tags[ref]
	if ta == nil {
		ta = &tagAsks{}
		l.tags[ref] = ta
	}
	ta.asks = append(ta.asks, digest)
}

// deleting notes that a DELETE of ref's manifest is about to be sent, and
// returns what to call once it was acknowledged (the tag is then owed
// absent: deleted).
func (l *churnLedger) deleting(ref, repo, digest string) (deleted func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if ta := l.tags[ref]; ta != nil {
		ta.deleteAsked = true
	}
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.deleted[repo+"@"+digest] = true
		delete(l.tags, ref)
	}
}

func (l *churnLedger) acked(ref, digest string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ta := l.tags[ref]
	if i := slices.Index(ta.asks, digest); i >= 0 {
		ta.asks, ta.acked = ta.asks[i:], true
	}
}

// TestKillDuringMetadataChurn kills the process with SIGKILL, three times,
// while clients move a tag, push and delete manifests, mount blobs across
// repositories, the config is reloaded and GC runs every second; after each restart, and again
// after GC had time to run on the restarted store: every tag resolves to a
// manifest whose blobs are all there and hash right, every acknowledged
// tag holds what it was last set to (or a later ask), and every
// acknowledged manifest DELETE stays deleted.
func TestKillDuringMetadataChurn(t *testing.T) {
	needBinary(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	s := siteServer(t, dataDir, fmt.Sprintf("\toci_registry {\n\t\tstorage %s\n\t\tgc_interval 1s\n\t\tgc_grace 3s\n\t}", strconv.Quote(dataDir)), 0)

	base := make([]churnImage, 4)
	for i := range base {
		base[i] = newChurnImage(t)
		if !base[i].pushBlobs(s, "team/base") || !base[i].putManifest(s, "team/base", "v"+strconv.Itoa(i)) {
			t.Fatal("seeding team/base failed")
		}
	}
	ledger := &churnLedger{tags: map[string]*tagAsks{}, deleted: map[string]bool{}}
	for i := range base {
		ledger.asked("team/base:v"+strconv.Itoa(i), base[i].digest)
		ledger.acked("team/base:v"+strconv.Itoa(i), base[i].digest)
	}

	for round := range 3 {
		clients := newLoops()
		clients.run(func(n int) { // tag moves
			im := base[n%len(base)]
			ledger.asked("team/base:moving", im.digest)
			if im.putManifest(s, "team/base", "moving") {
				ledger.acked("team/base:moving", im.digest)
			}
		})
		clients.run(func(n int) { // push, then delete the manifest
			im := newChurnImage(t)
			repo := "team/tmp" + strconv.Itoa(round)
			ref := repo + ":t" + strconv.Itoa(n)
			if !im.pushBlobs(s, repo) {
				return
			}
			ledger.asked(ref, im.digest)
			if !im.putManifest(s, repo, "t"+strconv.Itoa(n)) {
				return
			}
			ledger.acked(ref, im.digest)
			if n%2 == 0 {
				return // kept
			}
			deleted := ledger.deleting(ref, repo, im.digest)
			if st, _ := churnDo(http.MethodDelete, s.url("/v2/"+repo+"/manifests/"+im.digest), nil, ""); st == http.StatusAccepted {
				deleted()
			}
		})
		clients.run(func(n int) { // cross-repository mounts
			im := base[n%len(base)]
			repo := fmt.Sprintf("team/m%d-%d", round, n%40)
			for _, b := range [][]byte{im.config, im.layer} {
				st, _ := churnDo(http.MethodPost, s.url("/v2/"+repo+"/blobs/uploads/?mount="+blobDigest(b)+"&from=team/base"), nil, "")
				if st != http.StatusCreated {
					return
				}
			}
			ledger.asked(repo+":v", im.digest)
			if im.putManifest(s, repo, "v") {
				ledger.acked(repo+":v", im.digest)
			}
		})
		caddyfile, err := os.ReadFile(s.config)
		if err != nil {
			t.Fatal(err)
		}
		clients.run(func(int) { // reloads, which reopen the store
			time.Sleep(150 * time.Millisecond)
			req, _ := http.NewRequest(http.MethodPost, "http://"+s.admin+"/load", bytes.NewReader(caddyfile))
			req.Header.Set("Content-Type", "text/caddyfile")
			req.Header.Set("Cache-Control", "must-revalidate")
			if resp, err := churnClient.Do(req); err == nil {
				resp.Body.Close()
			}
		})
		time.Sleep(time.Duration(500+rand.IntN(1500)) * time.Millisecond)
		s.kill()
		clients.halt()
		s.start()
		checkChurn(t, s, ledger, fmt.Sprintf("after kill %d", round+1))
		if t.Failed() {
			return
		}
	}
	if n := churn5xx.Load(); n > 0 {
		t.Errorf("%d answers were 5xx, e.g. %v", n, churnSample.Load())
	}
	time.Sleep(5 * time.Second) // GC passes past the grace on the restarted store
	checkChurn(t, s, ledger, "after GC ran on the restarted store")
}

// checkChurn checks every tag of every repository, and the ledger.
func checkChurn(t *testing.T, s *server, l *churnLedger, when string) {
	t.Helper()
	var catalog struct {
		Repositories []string `json:"repositories"`
	}
	for last := ""; ; {
		var page struct {
			Repositories []string `json:"repositories"`
		}
		getJSON(t, s.url("/v2/_catalog?n=500&last="+last), &page)
		catalog.Repositories = append(catalog.Repositories, page.Repositories...)
		if len(page.Repositories) < 500 {
			break
		}
		last = page.Repositories[len(page.Repositories)-1]
	}
	tags := 0
	for _, repo := range catalog.Repositories {
		var list struct {
			Tags []string `json:"tags"`
		}
		getJSON(t, s.url("/v2/"+repo+"/tags/list"), &list)
		for _, tag := range list.Tags {
			tags++
			checkImage(t, s, repo, tag, when)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for ref, ta := range l.tags {
		if !ta.acked {
			continue // not owed (if there, it was checked above)
		}
		repo, tag, _ := strings.Cut(ref, ":")
		resp := do(t, http.MethodGet, s.url("/v2/"+repo+"/manifests/"+tag), nil, map[string]string{"Accept": ociManifest})
		got := blobDigest(readAll(t, resp))
		if resp.StatusCode == http.StatusNotFound && ta.deleteAsked {
			continue // its manifest's DELETE was sent, then cut off
		}
		if resp.StatusCode != http.StatusOK || !slices.Contains(ta.asks, got) {
			t.Errorf("%s: %s is %s %s, want one of %v (the last acknowledged first)", when, ref, resp.Status, got, ta.asks)
		}
	}
	for ref := range l.deleted {
		repo, d, _ := strings.Cut(ref, "@")
		if resp := do(t, http.MethodGet, s.url("/v2/"+repo+"/manifests/"+d), nil, map[string]string{"Accept": ociManifest}); resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s: deleted manifest %s answers %s", when, ref, resp.Status)
		}
	}
	t.Logf("%s: %d repositories, %d tags, %d deletes consistent", when, len(catalog.Repositories), tags, len(l.deleted))
}

func checkImage(t *testing.T, s *server, repo, tag, when string) {
	t.Helper()
	resp := do(t, http.MethodGet, s.url("/v2/"+repo+"/manifests/"+tag), nil, map[string]string{"Accept": ociManifest})
	body := readAll(t, resp)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("%s: %s:%s listed but answers %s", when, repo, tag, resp.Status)
		return
	}
	var m struct {
		Config struct{ Digest string }   `json:"config"`
		Layers []struct{ Digest string } `json:"layers"`
	}
	if err := json.Unmarshal(body, &m); err != nil {
		t.Errorf("%s: %s:%s: %v", when, repo, tag, err)
		return
	}
	for _, d := range append([]string{m.Config.Digest}, func() (ds []string) {
		for _, l := range m.Layers {
			ds = append(ds, l.Digest)
		}
		return
	}()...) {
		r := do(t, http.MethodGet, s.url("/v2/"+repo+"/blobs/"+d), nil, nil)
		b := readAll(t, r)
		if r.StatusCode != http.StatusOK || blobDigest(b) != d {
			t.Errorf("%s: %s:%s references %s: %s, %d bytes hashing to %s", when, repo, tag, d, r.Status, len(b), blobDigest(b))
		}
	}
}

func getJSON(t *testing.T, u string, v any) {
	t.Helper()
	resp := do(t, http.MethodGet, u, nil, nil)
	b := readAll(t, resp)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %s", u, resp.Status, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
}
