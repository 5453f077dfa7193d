package e2e

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestKillDuringReferrersAndTagDeletes kills the process with SIGKILL,
// three times, while clients push artifacts referring to one image and
// delete half of them again, and tag an image and delete the tag again.
// After each restart the referrers list, the manifests and the tags
// agree with what was acknowledged: every acknowledged referrer not
// deleted is listed, no acknowledged delete is listed or readable, every
// listed referrer reads back, and every acknowledged tag delete stays
// deleted (tags list and GET alike).
func TestKillDuringReferrersAndTagDeletes(t *testing.T) {
	needBinary(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	s := siteServer(t, dataDir, fmt.Sprintf("\toci_registry {\n\t\tstorage %s\n\t\tgc_interval 1s\n\t\tgc_grace 3s\n\t}", strconv.Quote(dataDir)), 0)
	const repo = "team/refs"
	subject := newChurnImage(t)
	if !subject.pushBlobs(s, repo) || !subject.putManifest(s, repo, "subject") {
		t.Fatal("pushing the subject failed")
	}
	empty := []byte("{}")
	if st, _ := churnDo(http.MethodPost, s.url("/v2/"+repo+"/blobs/uploads/?digest="+blobDigest(empty)), empty, ""); st != http.StatusCreated {
		t.Fatal("pushing the empty config failed")
	}
	artifact := func(n string) []byte {
		return []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.example.sig",`+
			`"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":%q,"size":2},"layers":[],`+
			`"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":%d},"annotations":{"n":%q}}`,
			blobDigest(empty), subject.digest, len(subject.manifest), n))
	}

	var (
		mu         sync.Mutex
		kept       = map[string]bool{} // referrers acknowledged, no delete asked
		deleted    = map[string]bool{} // referrer deletes acknowledged
		tagDeleted = map[string]bool{} // tag deletes acknowledged
		tagKept    = map[string]bool{} // tags acknowledged, no delete asked
	)
	for round := range 3 {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := 0; ; n++ {
					select {
					case <-stop:
						return
					default:
					}
					id := fmt.Sprintf("%d-%d-%d", round, w, n)
					if w%2 == 0 { // referrers
						m := artifact(id)
						d := blobDigest(m)
						if st, _ := churnDo(http.MethodPut, s.url("/v2/"+repo+"/manifests/"+d), m, ociManifest); st != http.StatusCreated {
							continue
						}
						if n%2 == 0 {
							mu.Lock()
							kept[d] = true
							mu.Unlock()
							continue
						}
						if st, _ := churnDo(http.MethodDelete, s.url("/v2/"+repo+"/manifests/"+d), nil, ""); st == http.StatusAccepted {
							mu.Lock()
							deleted[d] = true
							mu.Unlock()
						}
						continue
					}
					tag := "t" + id // tags of the subject
					if !subject.putManifest(s, repo, tag) {
						continue
					}
					if n%2 == 0 {
						mu.Lock()
						tagKept[tag] = true
						mu.Unlock()
						continue
					}
					if st, _ := churnDo(http.MethodDelete, s.url("/v2/"+repo+"/manifests/"+tag), nil, ""); st == http.StatusAccepted {
						mu.Lock()
						tagDeleted[tag] = true
						mu.Unlock()
					}
				}
			}()
		}
		time.Sleep(time.Duration(500+rand.IntN(1500)) * time.Millisecond)
		s.kill()
		close(stop)
		wg.Wait()
		s.start()

		when := fmt.Sprintf("after kill %d", round+1)
		var index struct {
			Manifests []struct {
				Digest string `json:"digest"`
			} `json:"manifests"`
		}
		resp := do(t, http.MethodGet, s.url("/v2/"+repo+"/referrers/"+subject.digest), nil, nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: referrers: %s", when, resp.Status)
		}
		if err := json.Unmarshal(readAll(t, resp), &index); err != nil {
			t.Fatal(err)
		}
		listed := map[string]bool{}
		for _, m := range index.Manifests {
			listed[m.Digest] = true
			if r := do(t, http.MethodGet, s.url("/v2/"+repo+"/manifests/"+m.Digest), nil, map[string]string{"Accept": ociManifest}); r.StatusCode != http.StatusOK || blobDigest(readAll(t, r)) != m.Digest {
				t.Errorf("%s: listed referrer %s answers %s", when, m.Digest, r.Status)
			}
		}
		var tags struct {
			Tags []string `json:"tags"`
		}
		getJSON(t, s.url("/v2/"+repo+"/tags/list"), &tags)
		mu.Lock()
		for d := range kept {
			if !listed[d] {
				t.Errorf("%s: acknowledged referrer %s not listed", when, d)
			}
		}
		for d := range deleted {
			if listed[d] {
				t.Errorf("%s: deleted referrer %s still listed", when, d)
			}
			if r := do(t, http.MethodGet, s.url("/v2/"+repo+"/manifests/"+d), nil, nil); r.StatusCode != http.StatusNotFound {
				t.Errorf("%s: deleted referrer %s answers %s", when, d, r.Status)
			}
		}
		for tag := range tagKept {
			if !slices.Contains(tags.Tags, tag) {
				t.Errorf("%s: acknowledged tag %s not listed", when, tag)
			}
		}
		for tag := range tagDeleted {
			if slices.Contains(tags.Tags, tag) {
				t.Errorf("%s: deleted tag %s still listed", when, tag)
			}
			if r := do(t, http.MethodGet, s.url("/v2/"+repo+"/manifests/"+tag), nil, nil); r.StatusCode != http.StatusNotFound {
				t.Errorf("%s: deleted tag %s answers %s", when, tag, r.Status)
			}
		}
		t.Logf("%s: %d referrers listed (%d kept, %d deleted), %d tags (%d kept, %d deleted)",
			when, len(listed), len(kept), len(deleted), len(tags.Tags), len(tagKept), len(tagDeleted))
		mu.Unlock()
		if t.Failed() {
			return
		}
	}
	if n := churn5xx.Load(); n > 0 {
		t.Errorf("%d answers were 5xx, e.g. %v", n, churnSample.Load())
	}
}
