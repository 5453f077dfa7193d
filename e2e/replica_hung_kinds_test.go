//go:build linux

package e2e

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/random"
)

// TestReplicaHungKinds: the S3 server, or PostgreSQL, is stopped
// (SIGSTOP) under two replicas while requests of every kind are on their
// way: 0-60 ms into each ("start"), or with each request's body (a
// blob GET's answer) half sent ("mid-body"). Every request answers
// within stallBound with its success or 503 with Retry-After (a blob
// GET whose answer had begun may be cut instead), never hangs, never
// another 5xx; after SIGCONT what was acknowledged is there through both
// replicas, what was not is there whole or not at all, and every kind
// works again without a restart. (A few requests go once the store is
// stopped, behind others: an upload's cancel behind its chunk.)
//
// Found so far: a Put of unknown size whose abort added its bound to
// its part's (55 s, then 37.8 s); a cancel behind a chunk that waited
// for the chunk, then for its own purge (55 s, then 37.1 s); a chunk
// whose session lease's release waited for a renewal in flight on a
// hung PostgreSQL (15 s, then 5-11 s).
func TestReplicaHungKinds(t *testing.T) {
	up := newUpstream(t)
	c := startCluster(t, 2, "\t\tmirror docker.io {\n\t\t\tupstream "+up.URL+"\n\t\t}\n", nil)
	round := 0
	for _, store := range []string{"S3", "PostgreSQL"} {
		for _, when := range []string{"start", "mid-body"} {
			t.Run(store+"/"+when, func(t *testing.T) {
				round++
				stop, cont := c.s3.Pause, c.s3.Resume
				if store == "PostgreSQL" {
					stop, cont = c.pg.Pause, c.pg.Resume
				}
				kinds := hungKindsSetUp(t, c, up, fmt.Sprintf("hung%d", round))
				if when == "mid-body" {
					kinds = withBodies(kinds)
				}
				answers := sendThroughStop(t, c.replicas, kinds, when == "mid-body", stop, cont)
				for i, k := range kinds {
					a := answers[i]
					if k.after != nil {
						k.after(t, a.status)
					}
				}
				for _, s := range c.replicas {
					s.alive("after " + store + " was stopped")
				}
			})
		}
	}
}

// hungKind is one request of a drill, and what is checked of it once
// the store continues.
type hungKind struct {
	what   string
	method string
	path   string
	header map[string]string
	body   []byte
	// chunked: the body goes without a Content-Length (its size unknown
	// to the registry).
	chunked bool
	// cut is where a mid-body stop holds the body (0: half way).
	cut int
	// on is the index of the replica it goes to.
	on int
	// afterStop: sent once the store is stopped, not before.
	afterStop bool
	// alsoOK are statuses that are no failure either (a chunk whose
	// session a cancel ended: 404, 416).
	alsoOK []int
	ok     int
	// want, for a GET answered ok, is the body it must have.
	want []byte
	// after checks, once the store continued, what the request's answer
	// during the stop (its status, 0 for none) promised.
	after func(t *testing.T, st int)
}

// hungAnswer is how a request of a drill was answered.
type hungAnswer struct {
	status int
	took   time.Duration
	cut    bool // the answer's body was cut (a blob GET already answering)
	err    error
}

// withBodies keeps the kinds that have a body to stop in the middle of:
// a request's, or a blob GET's answer.
func withBodies(kinds []hungKind) []hungKind {
	var out []hungKind
	for _, k := range kinds {
		if len(k.body) >= 2 || len(k.want) >= 1<<20 || k.afterStop {
			out = append(out, k)
		}
	}
	return out
}

// hungKindsSetUp pushes what the kinds need, under repositories named
// from p, and returns them.
func hungKindsSetUp(t *testing.T, c *replicaCluster, up *upstream, p string) []hungKind {
	t.Helper()
	a := c.replicas[0]
	repo := p + "/app"
	octet := map[string]string{"Content-Type": "application/octet-stream"}
	manifestCT := map[string]string{"Content-Type": ociManifest}
	var kinds []hungKind

	// Monolithic pushes: in memory (1 MiB), streamed (12 MiB), and of
	// unknown size (a multipart upload).
	// The one of unknown size is held past its first part (8 MiB), so
	// the stop meets a multipart upload under way.
	for _, mono := range []struct {
		what    string
		size    int
		chunked bool
		cut     int
	}{{"monolithic POST 1 MiB", 1 << 20, false, 0}, {"monolithic POST 12 MiB", 12 << 20, false, 0}, {"monolithic POST 12 MiB, no length", 12 << 20, true, 10 << 20}} {
		b := randomBytes(t, mono.size)
		d := blobDigest(b)
		kinds = append(kinds, hungKind{what: mono.what, method: http.MethodPost, path: "/v2/" + repo + "/blobs/uploads/?digest=" + d,
			header: octet, body: b, chunked: mono.chunked, cut: mono.cut, ok: http.StatusCreated,
			after: func(t *testing.T, st int) { checkBlobAfter(t, c, repo, d, b, st == http.StatusCreated, mono.what) }})
	}

	// Chunked: a first PATCH and a later one, each 6 MiB.
	for _, later := range []bool{false, true} {
		data := randomBytes(t, 12<<20+1)
		loc := startUpload(t, a, repo)
		from := 0
		if later {
			loc = patchChunk(t, a, loc, data, 0, 6<<20)
			from = 6 << 20
		}
		what := "first PATCH"
		if later {
			what = "later PATCH"
		}
		kinds = append(kinds, hungKind{what: what, method: http.MethodPatch, path: loc,
			header: map[string]string{"Content-Type": "application/octet-stream", "Content-Range": fmt.Sprintf("%d-%d", from, from+6<<20-1)},
			body:   data[from : from+6<<20], ok: http.StatusAccepted,
			after: func(t *testing.T, st int) {
				finishUploadAfter(t, c, repo, loc, data, from, 6<<20, st == http.StatusAccepted, what)
			}})
	}
	// A closing PUT that carries the last chunk, and an upload's start.
	{
		data := randomBytes(t, 12<<20+1)
		loc := patchChunk(t, a, startUpload(t, a, repo), data, 0, 6<<20)
		d := blobDigest(data)
		const what = "closing PUT with its chunk"
		kinds = append(kinds, hungKind{what: what, method: http.MethodPut, path: withQuery(loc, "digest="+url.QueryEscape(d)),
			header: octet, body: data[6<<20:], ok: http.StatusCreated,
			after: func(t *testing.T, st int) {
				if st == http.StatusCreated {
					checkBlobAfter(t, c, repo, d, data, true, what)
					return
				}
				// Not acknowledged: the session goes on where it stands
				// (the chunk in or not), unless the commit finished
				// after all and ended it.
				gone := settled(func() int { return status(http.MethodGet, c.replicas[1].url(loc)) }) == http.StatusNotFound
				if gone {
					checkBlobAfter(t, c, repo, d, data, true, what+" (its session gone)")
					return
				}
				finishUploadAfter(t, c, repo, loc, data, 6<<20, len(data)-6<<20, false, what)
			}})
		kinds = append(kinds, hungKind{what: "upload start", method: http.MethodPost, path: "/v2/" + repo + "/blobs/uploads/", ok: http.StatusAccepted})
	}
	// An upload's cancel on the other replica, sent once the store is
	// stopped, behind a chunk of the same session under way: it waits
	// for the chunk's lease, then cancels.
	{
		data := randomBytes(t, 6<<20)
		loc := startUpload(t, a, repo)
		kinds = append(kinds, hungKind{what: "PATCH before a cancel", method: http.MethodPatch, path: loc,
			header: map[string]string{"Content-Type": "application/octet-stream", "Content-Range": fmt.Sprintf("0-%d", len(data)-1)},
			body:   data, ok: http.StatusAccepted, alsoOK: []int{http.StatusNotFound, http.StatusRequestedRangeNotSatisfiable}})
		kinds = append(kinds, hungKind{what: "upload DELETE behind a chunk", method: http.MethodDelete, path: loc, ok: http.StatusNoContent,
			on: 1, afterStop: true,
			after: func(t *testing.T, st int) {
				if st == http.StatusNoContent {
					checkGone(t, c, loc, "upload DELETE")
				}
			}})
	}

	// Manifests: an image, an index of it, a referrer of it.
	img := newChurnImage(t)
	if !img.pushBlobs(a, repo) {
		t.Fatal("push the image's blobs")
	}
	kinds = append(kinds, hungKind{what: "manifest PUT", method: http.MethodPut, path: "/v2/" + repo + "/manifests/img",
		header: manifestCT, body: img.manifest, ok: http.StatusCreated,
		after: func(t *testing.T, st int) {
			checkManifestAfter(t, c, repo, "img", img.manifest, st == http.StatusCreated, "manifest PUT")
		}})
	base := newChurnImage(t)
	if !base.pushBlobs(a, repo) || !base.putManifest(a, repo, "base") {
		t.Fatal("push the base image")
	}
	index := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[`+
		`{"mediaType":%q,"digest":%q,"size":%d,"platform":{"architecture":"amd64","os":"linux"}}]}`,
		ociManifest, base.digest, len(base.manifest)))
	kinds = append(kinds, hungKind{what: "index PUT", method: http.MethodPut, path: "/v2/" + repo + "/manifests/index",
		header: map[string]string{"Content-Type": "application/vnd.oci.image.index.v1+json"}, body: index, ok: http.StatusCreated,
		after: func(t *testing.T, st int) {
			checkManifestAfter(t, c, repo, "index", index, st == http.StatusCreated, "index PUT")
		}})
	ref := referrerImage(t, base)
	if !ref.pushBlobs(a, repo) {
		t.Fatal("push the referrer's blobs")
	}
	kinds = append(kinds, hungKind{what: "referrer PUT", method: http.MethodPut, path: "/v2/" + repo + "/manifests/" + ref.digest,
		header: manifestCT, body: ref.manifest, ok: http.StatusCreated,
		after: func(t *testing.T, st int) {
			checkManifestAfter(t, c, repo, ref.digest, ref.manifest, st == http.StatusCreated, "referrer PUT")
			for _, s := range c.replicas {
				stored := settled(func() int { return status(http.MethodHead, s.url("/v2/"+repo+"/manifests/"+ref.digest)) }) == http.StatusOK
				listed := false
				for _, d := range referrerDigests(t, s, repo, base.digest) {
					listed = listed || d == ref.digest
				}
				if stored != listed {
					t.Errorf("referrer PUT answered %d: stored %v, listed among the subject's referrers %v", st, stored, listed)
				}
			}
		}})

	// Deletes: a tag, a manifest, a blob.
	tagged := newChurnImage(t)
	if !tagged.pushBlobs(a, repo) || !tagged.putManifest(a, repo, "gone") || !tagged.putManifest(a, repo, "kept") {
		t.Fatal("push the image whose tag goes")
	}
	kinds = append(kinds, hungKind{what: "tag DELETE", method: http.MethodDelete, path: "/v2/" + repo + "/manifests/gone", ok: http.StatusAccepted,
		after: func(t *testing.T, st int) {
			checkManifestAfter(t, c, repo, "gone", tagged.manifest, false, "tag DELETE")
			if st == http.StatusAccepted {
				checkGone(t, c, "/v2/"+repo+"/manifests/gone", "tag DELETE")
			}
			checkManifestAfter(t, c, repo, "kept", tagged.manifest, true, "tag DELETE (the other tag)")
		}})
	doomed := newChurnImage(t)
	if !doomed.pushBlobs(a, repo) || !doomed.putManifest(a, repo, "doomed") {
		t.Fatal("push the image that goes")
	}
	kinds = append(kinds, hungKind{what: "manifest DELETE", method: http.MethodDelete, path: "/v2/" + repo + "/manifests/" + doomed.digest, ok: http.StatusAccepted,
		after: func(t *testing.T, st int) {
			checkManifestAfter(t, c, repo, doomed.digest, doomed.manifest, false, "manifest DELETE")
			if st == http.StatusAccepted {
				checkGone(t, c, "/v2/"+repo+"/manifests/"+doomed.digest, "manifest DELETE")
			}
			for _, s := range c.replicas {
				byDigest := settled(func() int { return status(http.MethodHead, s.url("/v2/"+repo+"/manifests/"+doomed.digest)) })
				byTag := settled(func() int { return status(http.MethodHead, s.url("/v2/"+repo+"/manifests/doomed")) })
				if byDigest == http.StatusNotFound && byTag != http.StatusNotFound {
					t.Errorf("manifest DELETE answered %d: the manifest is gone (%d) but its tag answers %d", st, byDigest, byTag)
				}
			}
		}})
	lone := randomBytes(t, 256<<10)
	loneD := pushBlob(t, a, repo, lone)
	kinds = append(kinds, hungKind{what: "blob DELETE", method: http.MethodDelete, path: "/v2/" + repo + "/blobs/" + loneD, ok: http.StatusAccepted,
		after: func(t *testing.T, st int) {
			if st == http.StatusAccepted {
				checkGone(t, c, "/v2/"+repo+"/blobs/"+loneD, "blob DELETE")
				return
			}
			for _, s := range c.replicas {
				checkNotHalf(t, s, repo, loneD, lone, "blob DELETE answered "+fmt.Sprint(st))
			}
		}})

	// A cross-repository mount.
	mounted := randomBytes(t, 2<<20)
	mountedD := pushBlob(t, a, p+"/from", mounted)
	kinds = append(kinds, hungKind{what: "mount", method: http.MethodPost,
		path: "/v2/" + repo + "/blobs/uploads/?mount=" + mountedD + "&from=" + url.QueryEscape(p+"/from"), ok: http.StatusCreated,
		after: func(t *testing.T, st int) {
			checkBlobAfter(t, c, repo, mountedD, mounted, st == http.StatusCreated, "mount")
		}})

	// Reads of what is stored.
	// Larger than loopback's buffers take whole, so a stop mid-answer
	// meets the read from S3 under way.
	stored := randomBytes(t, 40<<20)
	storedD := pushBlob(t, a, repo, stored)
	if !tagged.putManifest(a, repo, "read") {
		t.Fatal("tag the image read")
	}
	accept := map[string]string{"Accept": ociManifest}
	for _, r := range []hungKind{
		{what: "blob GET", method: http.MethodGet, path: "/v2/" + repo + "/blobs/" + storedD, want: stored},
		{what: "blob HEAD", method: http.MethodHead, path: "/v2/" + repo + "/blobs/" + storedD},
		{what: "manifest GET", method: http.MethodGet, path: "/v2/" + repo + "/manifests/read", header: accept, want: tagged.manifest},
		{what: "manifest HEAD", method: http.MethodHead, path: "/v2/" + repo + "/manifests/read", header: accept},
		{what: "tags list", method: http.MethodGet, path: "/v2/" + repo + "/tags/list"},
		{what: "catalog", method: http.MethodGet, path: "/v2/_catalog"},
		{what: "referrers", method: http.MethodGet, path: "/v2/" + repo + "/referrers/" + base.digest},
	} {
		r.ok = http.StatusOK
		r.after = func(t *testing.T, _ int) { checkReadsAgain(t, c, r) }
		kinds = append(kinds, r)
	}

	// Cold mirror fills: a blob and a manifest upstream has.
	upImg, err := random.Image(12<<20, 1)
	if err != nil {
		t.Fatal(err)
	}
	upTag := "library/" + p + ":v1"
	up.push(t, upTag, upImg)
	layers, _ := upImg.Layers()
	ld, _ := layers[0].Digest()
	layer, err := layers[0].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	layerBytes, err := io.ReadAll(layer)
	if err != nil {
		t.Fatal(err)
	}
	rawManifest, err := upImg.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	mt, _ := upImg.MediaType()
	// The blob is asked of both replicas at once: one fills, the other
	// follows its fill (or fills too), on a store that stops.
	blobPath := "/v2/docker.io/library/" + p + "/blobs/" + ld.String()
	manifestPath := "/v2/docker.io/library/" + p + "/manifests/v1"
	for _, r := range []hungKind{
		{what: "mirror blob fill", method: http.MethodGet, path: blobPath, want: layerBytes},
		{what: "mirror blob fill, other replica", method: http.MethodGet, path: blobPath, want: layerBytes, on: 1},
		{what: "mirror blob HEAD during its fill", method: http.MethodHead, path: blobPath},
		{what: "mirror manifest fill", method: http.MethodGet, path: manifestPath, header: map[string]string{"Accept": string(mt)}, want: rawManifest},
		{what: "mirror manifest fill, other replica", method: http.MethodGet, path: manifestPath, header: map[string]string{"Accept": string(mt)}, want: rawManifest, on: 1},
	} {
		r.ok = http.StatusOK
		r.after = func(t *testing.T, _ int) { checkReadsAgain(t, c, r) }
		kinds = append(kinds, r)
	}
	return kinds
}

// gatedBody is a request body (or the reading of an answer's) that
// stops half way until gate is closed, having said so on reached.
type gatedBody struct {
	first, rest []byte
	reached     func()
	gate        <-chan struct{}
	once        sync.Once
}

func (g *gatedBody) Read(p []byte) (int, error) {
	if len(g.first) > 0 {
		n := copy(p, g.first)
		g.first = g.first[n:]
		return n, nil
	}
	g.once.Do(func() {
		g.reached()
		<-g.gate
	})
	if len(g.rest) == 0 {
		return 0, io.EOF
	}
	n := copy(p, g.rest)
	g.rest = g.rest[n:]
	return n, nil
}

// sendThroughStop sends kinds to s and stops the store with stop: 0-60
// ms into each request, or (midBody) once each has half its body (or a
// GET half its answer) through. It waits for every answer, checks each
// came within stallBound as its success or 503 with Retry-After,
// continues the store with cont, and returns the answers.
func sendThroughStop(t *testing.T, replicas []*server, kinds []hungKind, midBody bool, stop, cont func() error) []hungAnswer {
	t.Helper()
	answers := make([]hungAnswer, len(kinds))
	gate := make(chan struct{})
	stoppedCh := make(chan struct{})
	var reached sync.WaitGroup
	var done sync.WaitGroup
	stopAt := time.Now().Add(100 * time.Millisecond)
	for i, k := range kinds {
		done.Add(1)
		reached.Add(1)
		go func() {
			defer done.Done()
			var reach sync.Once
			arrived := func() { reach.Do(reached.Done) }
			if k.afterStop {
				arrived()
				<-stoppedCh
			} else if !midBody {
				arrived()
				time.Sleep(time.Until(stopAt.Add(-time.Duration(rand.IntN(60)) * time.Millisecond)))
			}
			var body io.Reader
			if k.body != nil {
				body = bytes.NewReader(k.body)
				if midBody {
					cut := k.cut
					if cut == 0 {
						cut = len(k.body) / 2
					}
					body = &gatedBody{first: k.body[:cut], rest: k.body[cut:], reached: arrived, gate: gate}
				}
			}
			req, err := http.NewRequest(k.method, replicas[k.on].url(k.path), body)
			if err != nil {
				answers[i].err = err
				arrived()
				return
			}
			if k.body != nil && !k.chunked {
				req.ContentLength = int64(len(k.body))
			} else if k.body != nil {
				req.ContentLength = -1
				req.Body = io.NopCloser(body) // the transport cannot tell its length
			}
			for h, v := range k.header {
				req.Header.Set(h, v)
			}
			start := time.Now()
			a := &answers[i]
			resp, err := (&http.Client{Timeout: 2 * stallBound}).Do(req)
			if err != nil {
				a.err, a.took = err, time.Since(start)
				arrived()
				return
			}
			var got []byte
			if midBody && k.body == nil && resp.StatusCode == http.StatusOK {
				half := make([]byte, len(k.want)/2)
				_, err = io.ReadFull(resp.Body, half)
				arrived()
				<-gate
				rest, rerr := io.ReadAll(resp.Body)
				got, err = append(half, rest...), cmpErr(err, rerr)
			} else {
				arrived()
				got, err = io.ReadAll(resp.Body)
			}
			resp.Body.Close()
			a.status, a.took = resp.StatusCode, time.Since(start)
			switch {
			case err != nil && k.want != nil && resp.StatusCode == http.StatusOK:
				a.cut = true
			case err != nil:
				a.err = err
			case resp.StatusCode == k.ok && k.want != nil && !bytes.Equal(got, k.want):
				a.err = fmt.Errorf("%d bytes that are not the %d expected", len(got), len(k.want))
			case resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") == "":
				a.err = fmt.Errorf("503 without Retry-After")
			case resp.StatusCode != k.ok && resp.StatusCode != http.StatusServiceUnavailable && !slices.Contains(k.alsoOK, resp.StatusCode):
				a.err = fmt.Errorf("%s %s", resp.Status, bytes.TrimSpace(got))
			}
		}()
	}
	waited := make(chan struct{})
	go func() { reached.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(30 * time.Second):
		close(gate)
		close(stoppedCh)
		t.Fatal("the requests did not all reach the point of the stop")
	}
	if !midBody {
		time.Sleep(time.Until(stopAt))
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	close(stoppedCh)
	close(gate)
	all := make(chan struct{})
	go func() { done.Wait(); close(all) }()
	select {
	case <-all:
	case <-time.After(stallBound + 10*time.Second):
		for _, s := range replicas {
			s.logGoroutines(t)
		}
		_ = cont()
		<-all
		t.Errorf("requests had no answer %s into the stop", stallBound+10*time.Second)
	}
	// Stopped at least 20 s, as a stop that matters lasts.
	time.Sleep(time.Until(stopped.Add(20 * time.Second)))
	if err := cont(); err != nil {
		t.Fatal(err)
	}
	for i, a := range answers {
		k := kinds[i]
		t.Logf("%s: %d after %s (cut %v, %v)", k.what, a.status, a.took.Round(time.Millisecond), a.cut, a.err)
		if a.err != nil || a.took > stallBound {
			t.Errorf("%s: %d after %s (%v); want %d or 503 with Retry-After within %s",
				k.what, a.status, a.took.Round(time.Millisecond), a.err, k.ok, stallBound)
		}
	}
	return answers
}

func cmpErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// settled is f's status once it is not 503 (the store's pool
// reconnecting, a session's lease running out), within 30 s.
func settled(f func() int) int {
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := f()
		if st != http.StatusServiceUnavailable && st != 0 || time.Now().After(deadline) {
			return st
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// checkBlobAfter: blob d of repo is whole through every replica if acked,
// else whole or absent.
func checkBlobAfter(t *testing.T, c *replicaCluster, repo, d string, want []byte, acked bool, what string) {
	t.Helper()
	for _, s := range c.replicas {
		st := settled(func() int { return status(http.MethodHead, s.url("/v2/"+repo+"/blobs/"+d)) })
		if acked && st != http.StatusOK {
			t.Errorf("%s acknowledged, then HEAD of the blob: %d", what, st)
			continue
		}
		checkNotHalf(t, s, repo, d, want, what)
	}
}

// checkManifestAfter: repo's ref is want through every replica if acked,
// else want or absent.
func checkManifestAfter(t *testing.T, c *replicaCluster, repo, ref string, want []byte, acked bool, what string) {
	t.Helper()
	for _, s := range c.replicas {
		var got []byte
		st := settled(func() (st int) {
			st, got = statusBody(http.MethodGet, s.url("/v2/"+repo+"/manifests/"+ref),
				map[string]string{"Accept": ociManifest + ",application/vnd.oci.image.index.v1+json"}, 10*time.Second)
			return st
		})
		switch {
		case st == http.StatusOK && !bytes.Equal(got, want):
			t.Errorf("%s: %s answers other bytes (%d)", what, ref, len(got))
		case st == http.StatusNotFound && acked:
			t.Errorf("%s acknowledged, then %s is 404", what, ref)
		case st != http.StatusOK && st != http.StatusNotFound:
			t.Errorf("%s: %s answers %d after the store continued", what, ref, st)
		}
	}
}

// checkGone: path answers 404 through every replica.
func checkGone(t *testing.T, c *replicaCluster, path, what string) {
	t.Helper()
	for _, s := range c.replicas {
		method := http.MethodHead
		if strings.Contains(path, "/uploads/") {
			method = http.MethodGet // an upload's status has no HEAD
		}
		if st := settled(func() int { return status(method, s.url(path)) }); st != http.StatusNotFound {
			t.Errorf("%s acknowledged, then HEAD %s: %d", what, path, st)
		}
	}
}

// checkReadsAgain: read k answers ok (with its body) through every
// replica once the store continued.
func checkReadsAgain(t *testing.T, c *replicaCluster, k hungKind) {
	t.Helper()
	for _, s := range c.replicas {
		var got []byte
		st := settled(func() (st int) {
			st, got = statusBody(k.method, s.url(k.path), k.header, 30*time.Second)
			return st
		})
		if st != k.ok || k.want != nil && !bytes.Equal(got, k.want) {
			t.Errorf("%s after the store continued: %d with %d bytes", k.what, st, len(got))
		}
	}
}

// startUpload begins an upload session on s and returns its path.
func startUpload(t *testing.T, s *server, repo string) string {
	t.Helper()
	resp := do(t, http.MethodPost, s.url("/v2/"+repo+"/blobs/uploads/"), nil, nil)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST: %s", resp.Status)
	}
	return uploadPath(t, resp.Header.Get("Location"))
}

// patchChunk sends data[from:to] to the session at loc and returns its
// next path.
func patchChunk(t *testing.T, s *server, loc string, data []byte, from, to int) string {
	t.Helper()
	resp := do(t, http.MethodPatch, s.url(loc), data[from:to], map[string]string{
		"Content-Type": "application/octet-stream", "Content-Range": fmt.Sprintf("%d-%d", from, to-1)})
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("PATCH: %s %s", resp.Status, readAll(t, resp))
	}
	return uploadPath(t, resp.Header.Get("Location"))
}

// finishUploadAfter: the session at loc, whose chunk of n bytes from
// offset from was answered (acked or not) during the stop, has from or
// from+n (acked: the latter) bytes once the store continued; the rest is
// sent and committed, through the other replica, and the blob is whole.
func finishUploadAfter(t *testing.T, c *replicaCluster, repo, loc string, data []byte, from, n int, acked bool, what string) {
	t.Helper()
	b := c.replicas[1]
	var rng string
	st := settled(func() int {
		req, _ := http.NewRequest(http.MethodGet, b.url(loc), nil)
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		rng = resp.Header.Get("Range")
		return resp.StatusCode
	})
	if st != http.StatusNoContent {
		t.Errorf("%s: the session after the store continued: %d", what, st)
		return
	}
	var end int
	if _, err := fmt.Sscanf(rng, "0-%d", &end); err != nil {
		t.Errorf("%s: session range %q", what, rng)
		return
	}
	have := end + 1
	if rng == "0-0" {
		have = 0 // how the registry says "empty" (uploadRange); no chunk here is 1 byte
	}
	if have != from+n && (acked || have != from) {
		t.Errorf("%s (acknowledged %v): the session has %d bytes, want %d or %d", what, acked, have, from, from+n)
		return
	}
	next := loc
	for off := have; off < len(data); {
		to := min(off+6<<20, len(data))
		var ok bool
		settled(func() int {
			req, _ := http.NewRequest(http.MethodPatch, b.url(next), bytes.NewReader(data[off:to]))
			req.Header.Set("Content-Type", "application/octet-stream")
			req.Header.Set("Content-Range", fmt.Sprintf("%d-%d", off, to-1))
			resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
			if err != nil {
				return 0
			}
			resp.Body.Close()
			if ok = resp.StatusCode == http.StatusAccepted; ok {
				next = uploadPath(t, resp.Header.Get("Location"))
			}
			return resp.StatusCode
		})
		if !ok {
			t.Errorf("%s: PATCH %d-%d after the store continued failed", what, off, to-1)
			return
		}
		off = to
	}
	d := blobDigest(data)
	if st := settled(func() int { return commitStatus(b.url(withQuery(next, "digest="+url.QueryEscape(d)))) }); st != http.StatusCreated {
		t.Errorf("%s: the closing PUT after the store continued: %d", what, st)
		return
	}
	for _, s := range c.replicas {
		getBlob(t, s, repo, d, data)
	}
}

// withQuery adds q to path's query.
func withQuery(path, q string) string {
	if strings.Contains(path, "?") {
		return path + "&" + q
	}
	return path + "?" + q
}

// statusBody sends method to u with header and returns the answer's
// status and body; 0 when there was no answer within timeout.
func statusBody(method, u string, header map[string]string, timeout time.Duration) (int, []byte) {
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		return 0, nil
	}
	for h, v := range header {
		req.Header.Set(h, v)
	}
	resp, err := (&http.Client{Timeout: timeout}).Do(req)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}
