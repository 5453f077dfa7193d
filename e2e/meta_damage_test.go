package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDamagedMetadataTable: a table of the metadata folder that a crash on
// a disk without write barriers left with its last pages zeroed (its
// length recorded, its data not). The server must refuse to start with an
// error that names the table, not die of a panic in badger's goroutine at
// every start; with the table whole again it serves what it held.
func TestDamagedMetadataTable(t *testing.T) {
	needBinary(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	s := newServer(t, dataDir)
	var images []churnImage
	for range 5 {
		im := newChurnImage(t)
		if !im.pushBlobs(s, "damage/app") || !im.putManifest(s, "damage/app", im.digest[7:19]) {
			t.Fatalf("push failed: %v", churnSample.Load())
		}
		images = append(images, im)
	}
	// A clean stop flushes the memtable into a table.
	if err := s.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	<-s.done
	tables, _ := filepath.Glob(filepath.Join(dataDir, "meta", "*.sst"))
	if len(tables) == 0 {
		t.Fatal("no table in meta/ after a clean stop")
	}
	sst := tables[len(tables)-1]
	whole, err := os.ReadFile(sst)
	if err != nil {
		t.Fatal(err)
	}
	damaged := append([]byte(nil), whole...)
	clear(damaged[max(0, len(damaged)-4096):])
	if err := os.WriteFile(sst, damaged, 0o644); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, caddyBin, "run", "--config", s.config, "--adapter", "caddyfile").CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("still running with %s damaged:\n%s", filepath.Base(sst), out)
	}
	if err == nil || strings.Contains(string(out), "panic:") ||
		!strings.Contains(string(out), "metadata table damaged") || !strings.Contains(string(out), filepath.Base(sst)) {
		t.Fatalf("with %s damaged, want an exit with an error naming it, no panic; got %v:\n%s", filepath.Base(sst), err, out)
	}

	if err := os.WriteFile(sst, whole, 0o644); err != nil {
		t.Fatal(err)
	}
	s.start()
	for _, im := range images {
		checkImage(t, s, "damage/app", im.digest[7:19], "with the table whole again")
	}
}

// bigManifestImage is a churnImage whose manifest is over 1 MiB, so that
// the embedded metadata keeps its bytes in badger's value log: padded with
// spaces (its record stays small), or with an annotation (its record, which
// keeps the annotations, goes to the value log too). A non-empty subject
// makes it a referrer of that manifest.
func bigManifestImage(t *testing.T, annotation bool, subject churnImage) churnImage {
	t.Helper()
	im := newChurnImage(t)
	const pad = 3 << 20 / 2
	tail, space := "", strings.Repeat(" ", pad)
	if annotation {
		tail, space = fmt.Sprintf(`,"annotations":{"pad":%q}`, strings.Repeat("p", pad)), ""
	}
	if subject.digest != "" {
		tail += fmt.Sprintf(`,"subject":{"mediaType":%q,"digest":%q,"size":%d}`, ociManifest, subject.digest, len(subject.manifest))
	}
	im.manifest = []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}]%s}%s`,
		blobDigest(im.config), len(im.config), blobDigest(im.layer), len(im.layer), tail, space))
	im.digest = blobDigest(im.manifest)
	return im
}

// TestDamagedValueLog: a manifest's values over badger's value threshold
// (one node on S3 keeps a manifest's bytes in metadata_dir, over 1 MiB in
// the value log; the single node keeps its record, over 64 KiB with its
// annotations) lost from the value log by a crash on a disk without write
// barriers, while the keys pointing at them stayed. badger logs the failed
// read and hands back an empty value. The manifest must not be answered
// 200 with other bytes than its digest's, nor fail every pull and push: it
// answers 404 (as the single node answers a manifest whose file is gone),
// a push of it again makes it whole, and a delete removes it.
func TestDamagedValueLog(t *testing.T) {
	srv, bucket := s3Bucket(t)
	for _, c := range []struct {
		name string
		// annotation: the record is lost (with the bytes, on S3); else
		// only the bytes, its record whole.
		annotation, singleNode bool
	}{{"s3 bytes lost", false, false}, {"s3 record and bytes lost", true, false}, {"single node record lost", true, true}} {
		t.Run(c.name, func(t *testing.T) {
			metaDir := filepath.Join(t.TempDir(), "meta")
			site := s3EmbeddedSite(srv, bucket, metaDir, "")
			if c.singleNode {
				dataDir := filepath.Join(t.TempDir(), "data")
				metaDir, site = filepath.Join(dataDir, "meta"), "\toci_registry {\n\t\tstorage "+strconv.Quote(dataDir)+"\n\t}"
			}
			s := siteServer(t, "", site, 0)
			// big and sig are referrers of small; only big is damaged.
			small := newChurnImage(t)
			big, sig := bigManifestImage(t, c.annotation, small), referrerImage(t, small)
			repo := "damage/" + strings.ReplaceAll(c.name, " ", "-")
			for _, p := range []struct {
				tag string
				im  churnImage
			}{{"small", small}, {"big", big}, {"sig", sig}} {
				if !p.im.pushBlobs(s, repo) || !p.im.putManifest(s, repo, p.tag) {
					t.Fatalf("push of %s failed: %v", p.tag, churnSample.Load())
				}
			}
			s.kill()
			// Half of the last value, or on S3 with an annotation the
			// last two (the record and the bytes, in either order).
			lose := len(big.manifest) / 2
			if c.annotation && !c.singleNode {
				lose = len(big.manifest) * 2
			}
			loseLogTail(t, metaDir, lose)

			s.start()
			checkImage(t, s, repo, "small", "after the value log's tail was lost")
			// The list of small's referrers answers what it can read, as
			// GET answers the damaged one unknown, and logs the damaged
			// one as its GET does.
			if got := referrerDigests(t, s, repo, small.digest); len(got) != 1 || got[0] != sig.digest {
				t.Errorf("referrers of small after big's value was lost: %v; want only %s", got, sig.digest)
			}
			if !s.logsWithin(5*time.Second, `"level":"error"`, big.digest) {
				t.Errorf("the damaged referrer %s left out of the list without an error in the log", big.digest)
			}
			for _, ref := range []string{"big", big.digest} {
				// A HEAD says what a GET says: pushing clients that
				// HEAD first send it again only on a 404.
				if st, _ := churnDo(http.MethodHead, s.url("/v2/"+repo+"/manifests/"+ref), nil, ""); st != http.StatusNotFound {
					t.Errorf("HEAD manifest %s after its value was lost: %d; want 404", ref, st)
				}
				req, _ := http.NewRequest(http.MethodGet, s.url("/v2/"+repo+"/manifests/"+ref), nil)
				req.Header.Set("Accept", ociManifest)
				resp, err := churnClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusNotFound {
					t.Errorf("GET manifest %s after its value was lost: %s (Content-Length %s, Docker-Content-Digest %s), then %d bytes hashing to %s (%v); want 404",
						ref, resp.Status, resp.Header.Get("Content-Length"), resp.Header.Get("Docker-Content-Digest"), len(body), blobDigest(body), err)
				}
			}
			if c.annotation {
				if st, _ := churnDo(http.MethodDelete, s.url("/v2/"+repo+"/manifests/"+big.digest), nil, ""); st != http.StatusAccepted {
					t.Errorf("DELETE of the damaged manifest: %d (%v)", st, churnSample.Load())
				}
			}
			if !big.putManifest(s, repo, "big") {
				t.Fatalf("push of the big manifest again: %v", churnSample.Load())
			}
			checkImage(t, s, repo, "big", "pushed again")
			if got := referrerDigests(t, s, repo, small.digest); len(got) != 2 {
				t.Errorf("referrers of small once big was pushed again: %v; want %s and %s", got, big.digest, sig.digest)
			}
		})
	}
}

// logsWithin reports whether a line of s's output holds all of words
// within d: the output reaches the test through a pipe, after the answer
// of the request that logged it may have.
func (s *server) logsWithin(d time.Duration, words ...string) bool {
	for deadline := time.Now().Add(d); ; time.Sleep(20 * time.Millisecond) {
		for line := range strings.Lines(s.out.String()) {
			if !slices.ContainsFunc(words, func(w string) bool { return !strings.Contains(line, w) }) {
				return true
			}
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// referrerImage is a small artifact manifest whose subject is subject.
func referrerImage(t *testing.T, subject churnImage) churnImage {
	t.Helper()
	im := newChurnImage(t)
	im.manifest = []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"artifactType":"application/example.sig",`+
		`"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":%q,"size":%d},`+
		`"layers":[{"mediaType":"application/octet-stream","digest":%q,"size":%d}],`+
		`"subject":{"mediaType":%q,"digest":%q,"size":%d}}`,
		ociManifest, blobDigest(im.config), len(im.config), blobDigest(im.layer), len(im.layer),
		ociManifest, subject.digest, len(subject.manifest)))
	im.digest = blobDigest(im.manifest)
	return im
}

// referrerDigests lists the digests GET /v2/<repo>/referrers/<subject>
// answers; any status but 200 fails the test.
func referrerDigests(t *testing.T, s *server, repo, subject string) []string {
	t.Helper()
	resp, err := churnClient.Get(s.url("/v2/" + repo + "/referrers/" + subject))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET referrers of %s: %s (%v): %s", subject, resp.Status, err, body)
	}
	var index struct {
		Manifests []struct{ Digest string }
	}
	if err := json.Unmarshal(body, &index); err != nil {
		t.Fatalf("GET referrers of %s: %v: %s", subject, err, body)
	}
	var out []string
	for _, m := range index.Manifests {
		out = append(out, m.Digest)
	}
	slices.Sort(out)
	return out
}

// loseLogTail zeroes the last n bytes written to the newest value log of
// dir.
func loseLogTail(t *testing.T, dir string, n int) {
	t.Helper()
	logs, _ := filepath.Glob(filepath.Join(dir, "*.vlog"))
	if len(logs) == 0 {
		t.Fatal("no value log in metadata_dir")
	}
	vlog := logs[len(logs)-1]
	b, err := os.ReadFile(vlog)
	if err != nil {
		t.Fatal(err)
	}
	end := len(bytes.TrimRight(b, "\x00"))
	if end < n {
		t.Fatalf("%s holds %d bytes, less than the %d to lose", filepath.Base(vlog), end, n)
	}
	f, err := os.OpenFile(vlog, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(make([]byte, n), int64(end-n)); err != nil {
		t.Fatal(err)
	}
}
