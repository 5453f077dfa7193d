package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// resetPeakRSS starts peakRSS (replicas_bench_test.go) afresh (Linux's clear_refs, value 5).
func resetPeakRSS(t *testing.T, pid int) {
	t.Helper()
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0o200); err != nil {
		t.Skipf("cannot reset the peak RSS: %v", err)
	}
}

// TestReferrersMemoryBounded: a referrer's annotations may be as large as
// its manifest, and one subject may have any number of referrers; whoever
// may push to a repository must not be able to make a GET of its
// referrers cost the server memory in proportion to the whole list. Three
// clients at once read an index of 60 referrers with 2 MiB of annotations
// each (120 MiB): holding each list whole, decoded and then encoded, cost
// the server 1.3 GiB; read and sent a page of referrers at a time it stays
// near 3 pages' worth. Every client still gets the whole index, in one
// response.
func TestReferrersMemoryBounded(t *testing.T) {
	needBinary(t)
	dataDir := t.TempDir()
	s := siteServer(t, dataDir, "\toci_registry {\n\t\tstorage "+strconv.Quote(dataDir)+"\n\t\tmax_manifest_size 4MiB\n\t}", 0)
	cd := pushBlob(t, s, "app", []byte(`{}`))
	const mt = "application/vnd.oci.image.manifest.v1+json"
	subject := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"%s","size":2},"layers":[]}`, mt, cd)
	if resp := do(t, http.MethodPut, s.url("/v2/app/manifests/v1"), []byte(subject), map[string]string{"Content-Type": mt}); resp.StatusCode != http.StatusCreated {
		t.Fatalf("subject: %s", resp.Status)
	}
	sd := blobDigest([]byte(subject))
	big := strings.Repeat("a", 2<<20)
	const n = 60
	for i := range n {
		ref := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"%s","artifactType":"application/x-drill","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"%s","size":2},"layers":[],"subject":{"mediaType":"%s","digest":"%s","size":%d},"annotations":{"big":"%s","i":"%d"}}`,
			mt, cd, mt, sd, len(subject), big, i)
		if resp := do(t, http.MethodPut, s.url("/v2/app/manifests/"+blobDigest([]byte(ref))), []byte(ref), map[string]string{"Content-Type": mt}); resp.StatusCode != http.StatusCreated {
			t.Fatalf("referrer %d: %s", i, resp.Status)
		}
	}
	pid := s.cmd.Process.Pid
	resetPeakRSS(t, pid)
	before := peakRSS(t, pid)
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(s.url("/v2/app/referrers/" + sd))
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			var idx struct {
				Manifests []struct {
					Digest      string            `json:"digest"`
					Annotations map[string]string `json:"annotations"`
				} `json:"manifests"`
			}
			// Decoded as it arrives; the annotations are checked and dropped.
			dec := json.NewDecoder(resp.Body)
			if err := dec.Decode(&idx); err != nil || resp.StatusCode != http.StatusOK {
				t.Errorf("referrers: %s %v", resp.Status, err)
				return
			}
			if len(idx.Manifests) != n {
				t.Errorf("referrers: %d descriptors, want %d", len(idx.Manifests), n)
			}
			for _, m := range idx.Manifests {
				if len(m.Annotations["big"]) != len(big) {
					t.Errorf("referrer %s: annotation of %d bytes, want %d", m.Digest, len(m.Annotations["big"]), len(big))
				}
			}
			_, _ = io.Copy(io.Discard, resp.Body)
		}()
	}
	wg.Wait()
	grew := peakRSS(t, pid) - before
	t.Logf("peak RSS grew by %.0f MiB serving 3 x %d MiB of referrers", grew, n*2)
	if grew > 250 {
		t.Errorf("peak RSS grew by %.0f MiB serving the referrers list, want <= 250 MiB", grew)
	}
}
