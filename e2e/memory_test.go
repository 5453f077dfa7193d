package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// resetPeakRSS starts peakRSS (replicas_bench_test.go) afresh (Linux's clear_refs, value 5).
// samplePeak reads field (kB) of pid's /proc status every 10 ms until the
// returned function is called, which returns the largest value seen, in
// MiB. The kernel keeps a peak of the whole RSS only (VmHWM); this one is
// for its parts (RssAnon: the heap and stacks, without file pages).
func samplePeak(t *testing.T, pid int, field string) func() float64 {
	t.Helper()
	peak := procStatusMiB(t, pid, field)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				// Not procStatusMiB: t.Fatal is for the test's goroutine.
				if st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status"); err == nil {
					for line := range strings.Lines(string(st)) {
						if v, ok := strings.CutPrefix(line, field+":"); ok {
							if kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB")); err == nil {
								peak = max(peak, float64(kb)/1024)
							}
						}
					}
				}
			}
		}
	}()
	return func() float64 {
		close(stop)
		<-done
		return peak
	}
}

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

// TestMirrorEndlessTagListMemory: an upstream whose tag list never ends
// (or is merely long: short names cost several times their size decoded)
// must not cost the mirror memory in proportion to what it sends. Eight
// clients at once grew the server's peak RSS by over 500 MiB when each
// list was read whole up to 32 MiB; read a page at a time, each costs a
// few MiB.
func TestMirrorEndlessTagListMemory(t *testing.T) {
	needBinary(t)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/tags/list") {
			w.WriteHeader(http.StatusOK) // /v2/
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"name":"x","tags":["a"`)
		chunk := strings.Repeat(`,"a"`, 64<<10)
		for r.Context().Err() == nil {
			if _, err := io.WriteString(w, chunk); err != nil {
				return
			}
		}
	}))
	defer up.Close()
	s := mirrorServer(t, up.URL)
	pid := s.cmd.Process.Pid
	resetPeakRSS(t, pid)
	before := peakRSS(t, pid)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(s.url(fmt.Sprintf("/v2/docker.io/library/app%d/tags/list", i)))
			if err != nil {
				t.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.Header.Get("Link") == "" {
				t.Errorf("endless tag list: %s, Link %q; want 200 and a first page", resp.Status, resp.Header.Get("Link"))
			}
		}()
	}
	wg.Wait()
	grew := peakRSS(t, pid) - before
	t.Logf("peak RSS grew by %.0f MiB serving 8 endless tag lists", grew)
	if grew > 150 {
		t.Errorf("peak RSS grew by %.0f MiB, want <= 150 MiB", grew)
	}
}

// TestManifestPutsMemoryBounded: a manifest is decoded and stored in
// memory at about five times its size, and pushes may send manifests of
// megabytes (annotations) all at once. 48 pushes of 4 MiB manifests at once
// grew the server's peak RSS by about 1 GiB; with the work after the read
// taking turns by size (registry/manifestmem.go) the bodies being received
// were left: 100 pushes at once still grew the process's anonymous memory
// by about 550 MiB, and more pushers would have grown it further. With
// the bodies taking turns too it stays near the two budgets (64 MiB of
// bodies, 16 MiB of work at about five times its size), whatever the
// number of pushers. The file pages badger's memory-mapped value log
// touches (reclaimable page cache, counted in the peak RSS) are logged,
// not bounded here.
func TestManifestPutsMemoryBounded(t *testing.T) {
	needBinary(t)
	dataDir := t.TempDir()
	s := siteServer(t, dataDir, "\toci_registry {\n\t\tstorage "+strconv.Quote(dataDir)+"\n\t\tmax_manifest_size 4MiB\n\t}", 0)
	cd := pushBlob(t, s, "app", []byte(`{}`))
	const n, size = 100, 4 << 20
	bodies := make([]string, n)
	for i := range bodies {
		head := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"%s","size":2},"layers":[],"annotations":{"i":"%d","k":"`, cd, i)
		bodies[i] = head + strings.Repeat("b", size-len(head)-3) + `"}}`
	}
	pid := s.cmd.Process.Pid
	resetPeakRSS(t, pid)
	before := peakRSS(t, pid)
	anonBefore := procStatusMiB(t, pid, "RssAnon")
	peakAnon := samplePeak(t, pid, "RssAnon")
	var wg sync.WaitGroup
	for i, body := range bodies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodPut, s.url(fmt.Sprintf("/v2/app/manifests/t%d", i)), strings.NewReader(body))
			req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusCreated {
				t.Errorf("PUT %d: %s", i, resp.Status)
			}
		}()
	}
	wg.Wait()
	anonGrew := peakAnon() - anonBefore
	grew := peakRSS(t, pid) - before
	t.Logf("for %d x 4 MiB manifests pushed at once: anonymous memory grew by %.0f MiB at most, peak RSS (file pages too) by %.0f MiB", n, anonGrew, grew)
	if anonGrew > 300 {
		t.Errorf("anonymous memory grew by %.0f MiB, want <= 300 MiB", anonGrew)
	}
	// Every one stored whole.
	for i := range n {
		resp := do(t, http.MethodGet, s.url(fmt.Sprintf("/v2/app/manifests/t%d", i)), nil,
			map[string]string{"Accept": "application/vnd.oci.image.manifest.v1+json"})
		if b := readAll(t, resp); resp.StatusCode != http.StatusOK || string(b) != bodies[i] {
			t.Fatalf("t%d: %s, %d bytes", i, resp.Status, len(b))
		}
	}
}
