package e2e

// The issue 11 acceptance drill with the clients people run: crane,
// skopeo and podman push, containerd and podman pull, through the load
// balancer in front of three replicas, while replicas are killed with
// SIGKILL and started again one at a time and GC collects throughout.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// clientDrillGC: a pass every second, and a grace short enough that the
// orphan blobs the drill leaves go while replicas are being killed, yet
// longer than any push takes between its blobs and its manifest.
const clientDrillGC = "\t\tgc_interval 1s\n\t\tgc_grace 10s\n"

// clientDrillKills is how many replicas the drill kills, in turn.
const clientDrillKills = 5

// drillAck is a push a client acknowledged: where, what digest, by whom.
type drillAck struct {
	ref, digest, by string
}

// drillTally counts what each client did; its methods may be called
// from any goroutine.
type drillTally struct {
	mu      sync.Mutex
	acked   []drillAck
	done    map[string]int // "crane push", "containerd pull", ...
	retried map[string]int // the test's one retry of a pull was needed
	own     map[string]int // the client retried by itself (and succeeded)
	failed  map[string]int
}

func (d *drillTally) add(m map[string]int, what string) {
	d.mu.Lock()
	m[what]++
	d.mu.Unlock()
}

func (d *drillTally) ack(a drillAck) {
	d.mu.Lock()
	d.acked = append(d.acked, a)
	d.done[a.by+" push"]++
	d.mu.Unlock()
}

// next returns the first acknowledged push after *cursor that keep
// accepts, and moves the cursor past it.
func (d *drillTally) next(cursor *int, keep func(drillAck) bool) (drillAck, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for *cursor < len(d.acked) {
		a := d.acked[*cursor]
		*cursor++
		if keep(a) {
			return a, true
		}
	}
	return drillAck{}, false
}

// TestReplicaKillDrillClients is the acceptance drill of issue 11 with
// every client it names. crane and skopeo (--retry-times 3) push fresh
// images, podman (its own three retries) pushes each image it pulled to
// a repository of its own; containerd (ctr with hosts.toml naming the load
// balancer) and podman pull, each pull checked against the digest its
// push acknowledged. Meanwhile the replicas are killed with SIGKILL one
// at a time, clientDrillKills times, each started again two seconds
// later, and GC runs every second on whichever replica holds its lease.
//
// Retries: the clients retry as they do by themselves (crane and podman
// their requests or copies, skopeo three times as told); the test adds
// one retry, after a second, to a pull that failed anyway (ctr has no
// retry of its own, and a layer in flight on a killed replica is cut),
// and none to a push. Every failure after that fails the test.
//
// At the end every acknowledged push is read through every replica
// directly, by tag and by digest, and every blob it references is read
// whole and hashed; GC must have collected during the kills.
func TestReplicaKillDrillClients(t *testing.T) {
	crane, skopeo, podman := tool(t, "crane"), tool(t, "skopeo"), tool(t, "podman")
	ctrd := startContainerd(t)
	c := startCluster(t, 3, clientDrillGC, nil)
	front := c.front
	start := time.Now()

	hosts := t.TempDir()
	writeHostsToml(t, hosts, front.addr, fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n",
		"http://"+front.addr, "http://"+front.addr))
	conf := filepath.Join(t.TempDir(), "registries.conf")
	if err := os.WriteFile(conf, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	podEnv := []string{"CONTAINERS_REGISTRIES_CONF=" + conf}
	podBase := podmanBase(t)
	digestFile := filepath.Join(t.TempDir(), "digest")

	// GC's work: blobs no manifest references, one now and one per kill.
	// A push that a kill cut is sent again, as a client does.
	pushOrphan := func(n int) string {
		b := fmt.Appendf(nil, "orphan %d", n)
		d := blobDigest(b)
		for attempt := 1; ; attempt++ {
			resp, err := http.Post(front.url("/v2/drill/orphan/blobs/uploads/?digest="+d), "application/octet-stream", bytes.NewReader(b))
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusCreated {
					return d
				}
				err = fmt.Errorf("%s", resp.Status)
			}
			if attempt == 3 {
				t.Fatalf("push of orphan blob %d: %v", n, err)
			}
			time.Sleep(time.Second)
		}
	}
	orphans := []string{pushOrphan(0)}

	tally := &drillTally{done: map[string]int{}, retried: map[string]int{}, own: map[string]int{}, failed: map[string]int{}}
	// ownRetry notes a client's retry of its own in its output: crane
	// logs "retrying", containers/image "Failed, retrying in".
	ownRetry := func(what, out string) {
		if strings.Contains(strings.ToLower(out), "retrying") {
			tally.add(tally.own, what)
		}
	}
	fail := func(what, format string, args ...any) {
		tally.add(tally.failed, what)
		t.Errorf(what+": "+format, args...)
	}
	// pull runs f, and once more after a second if it failed.
	pull := func(what string, f func() error) bool {
		err := f()
		if err != nil {
			tally.add(tally.retried, what)
			t.Logf("%s failed, the test retries once: %v", what, err)
			time.Sleep(time.Second)
			err = f()
		}
		if err != nil {
			fail(what, "failed after a retry: %v", err)
			return false
		}
		tally.add(tally.done, what)
		return true
	}

	stop := make(chan struct{})
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	var wg sync.WaitGroup
	// crane and skopeo push fresh images, each to a tag of its own.
	for _, by := range []string{"crane", "skopeo"} {
		wg.Go(func() {
			for i := 0; !stopped(); i++ {
				img := platformImage(t)
				d, _ := img.Digest()
				src, ref := writeLayout(t, img), fmt.Sprintf("%s/drill/%s:v%d", front.addr, by, i)
				var out string
				var err error
				if by == "crane" {
					out, err = try(nil, crane, "push", "--insecure", src, ref)
				} else {
					out, err = try(nil, skopeo, "copy", "--retry-times", "3", "--dest-tls-verify=false", "oci:"+src, "docker://"+ref)
				}
				ownRetry(by+" push", out)
				if err != nil {
					fail(by+" push", "%s: %v", ref, err)
					continue
				}
				tally.ack(drillAck{ref: ref, digest: d.String(), by: by})
			}
		})
	}
	// podman pulls each image crane and skopeo pushed, then pushes it
	// to a repository of its own.
	wg.Go(func() {
		cursor := 0
		for i := 0; !stopped(); {
			a, ok := tally.next(&cursor, func(a drillAck) bool { return a.by != "podman" })
			if !ok {
				time.Sleep(200 * time.Millisecond)
				continue
			}
			if !pull("podman pull", func() error {
				out, err := try(podEnv, podman, append(podBase, "pull", "--tls-verify=false", a.ref)...)
				ownRetry("podman pull", out)
				if err != nil {
					return err
				}
				out, err = try(podEnv, podman, append(podBase, "image", "inspect", "--format", "{{.Digest}}", a.ref)...)
				if err != nil {
					return err
				}
				if got := strings.TrimSpace(out); got != a.digest {
					return fmt.Errorf("podman pulled %s as %s, pushed as %s", a.ref, got, a.digest)
				}
				return nil
			}) {
				continue
			}
			ref := fmt.Sprintf("%s/drill/podman:v%d", front.addr, i)
			i++
			out, err := try(podEnv, podman, append(podBase, "push", "--tls-verify=false", "--digestfile", digestFile, a.ref, "docker://"+ref)...)
			ownRetry("podman push", out)
			if err != nil {
				fail("podman push", "%s: %v", ref, err)
				continue
			}
			b, err := os.ReadFile(digestFile)
			if err != nil {
				fail("podman push", "%s: no digest file: %v", ref, err)
				continue
			}
			tally.ack(drillAck{ref: ref, digest: strings.TrimSpace(string(b)), by: "podman"})
		}
	})
	// containerd pulls every acknowledged push, and removes it again so
	// that the next pull of shared layers fetches them afresh.
	wg.Go(func() {
		cursor := 0
		for !stopped() {
			a, ok := tally.next(&cursor, func(drillAck) bool { return true })
			if !ok {
				time.Sleep(200 * time.Millisecond)
				continue
			}
			pull("containerd pull", func() error { return ctrPull(ctrd, hosts, a) })
		}
	})

	// Each replica in turn killed while the clients work, down two
	// seconds (the load balancer routes around it), started again.
	var logs []*syncBuffer // of the processes killed
	for k := range clientDrillKills {
		time.Sleep(4 * time.Second)
		r := c.replicas[k%len(c.replicas)]
		logs = append(logs, r.out)
		r.kill()
		t.Logf("%s: replica %d killed", time.Since(start).Round(time.Second), k%len(c.replicas))
		orphans = append(orphans, pushOrphan(k+1))
		time.Sleep(2 * time.Second)
		r.start()
	}
	time.Sleep(3 * time.Second)
	// GC collected while the replicas were killed: count its log lines
	// (killed processes' included) before the clients stop.
	for _, r := range c.replicas {
		logs = append(logs, r.out)
	}
	collections, serverErrors := 0, 0
	for _, l := range logs {
		for line := range strings.Lines(l.String()) {
			switch {
			case strings.Contains(line, `"garbage collected"`):
				collections++
			case strings.Contains(line, `"level":"error"`):
				serverErrors++
				t.Logf("replica error: %s", strings.TrimSpace(line))
			}
		}
	}
	close(stop)
	wg.Wait()
	tally.mu.Lock()
	acked := tally.acked
	t.Logf("%s: acknowledged %v; clients retried by themselves in %v; the test's pull retry was needed %v; failed %v; "+
		"%d GC passes collected during the kills; %d error lines on the replicas",
		time.Since(start).Round(time.Second), tally.done, tally.own, tally.retried, tally.failed, collections, serverErrors)
	tally.mu.Unlock()
	if collections == 0 {
		t.Errorf("GC collected nothing during the drill (gc_grace 10s, orphans from the start)")
	}
	for _, by := range []string{"crane push", "skopeo push", "podman push", "podman pull", "containerd pull"} {
		if tally.done[by] == 0 {
			t.Errorf("no %s succeeded: the drill did not exercise it", by)
		}
	}

	// Nothing acknowledged is lost or damaged, on any replica.
	var vwg sync.WaitGroup
	for i, r := range c.replicas {
		vwg.Go(func() {
			for _, a := range acked {
				if err := verifyPushed(r.addr, a); err != nil {
					t.Errorf("replica %d: %s pushed by %s: %v", i, a.ref, a.by, err)
				}
			}
		})
	}
	vwg.Wait()
	// And the orphan of the start, older than the grace, is gone.
	if st := status(http.MethodHead, front.url("/v2/drill/orphan/blobs/"+orphans[0])); st != http.StatusNotFound {
		t.Errorf("orphan blob %s pushed at the start: HEAD %d after the drill, want 404 (collected)", orphans[0], st)
	}
	t.Logf("%s: %d acknowledged images verified on %d replicas", time.Since(start).Round(time.Second), len(acked), len(c.replicas))
}

// ctrPull pulls a with containerd, checks the digest it recorded, and
// removes the image and its content (--sync: now, not at the next GC).
func ctrPull(c *containerd, hosts string, a drillAck) error {
	base := []string{"--address", c.sock, "-n", "drill"}
	if _, err := try(nil, c.ctr, append(base, "images", "pull", "--hosts-dir", hosts, "--snapshotter", "native", a.ref)...); err != nil {
		return err
	}
	out, err := try(nil, c.ctr, append(base, "images", "ls", "name=="+a.ref)...)
	if err != nil {
		return err
	}
	got := ""
	for line := range strings.Lines(out) {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == a.ref {
			got = f[2]
		}
	}
	if _, err := try(nil, c.ctr, append(base, "images", "rm", "--sync", a.ref)...); err != nil {
		return err
	}
	if got != a.digest {
		return fmt.Errorf("containerd pulled %s as %q, pushed as %s:\n%s", a.ref, got, a.digest, out)
	}
	return nil
}

// verifyPushed reads a through one replica: its tag names its digest,
// the manifest reads by digest, and its config and every layer read
// whole and hash to the digests the manifest gives.
func verifyPushed(addr string, a drillAck) error {
	pushed, err := name.ParseReference(a.ref, name.Insecure)
	if err != nil {
		return err
	}
	byTag, err := name.ParseReference(addr+"/"+pushed.Context().RepositoryStr()+":"+pushed.Identifier(), name.Insecure)
	if err != nil {
		return err
	}
	desc, err := remote.Head(byTag)
	if err != nil {
		return fmt.Errorf("by tag: %w", err)
	}
	if desc.Digest.String() != a.digest {
		return fmt.Errorf("tag points at %s, pushed %s", desc.Digest, a.digest)
	}
	byDigest := byTag.Context().Digest(a.digest)
	img, err := remote.Image(byDigest)
	if err != nil {
		return fmt.Errorf("by digest: %w", err)
	}
	m, err := img.Manifest()
	if err != nil {
		return err
	}
	for _, d := range append([]v1.Descriptor{m.Config}, m.Layers...) {
		l, err := remote.Layer(byTag.Context().Digest(d.Digest.String()))
		if err != nil {
			return err
		}
		rc, err := l.Compressed()
		if err != nil {
			return fmt.Errorf("blob %s: %w", d.Digest, err)
		}
		h := sha256.New()
		n, err := io.Copy(h, rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("blob %s: %w", d.Digest, err)
		}
		if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != d.Digest.String() || n != d.Size {
			return fmt.Errorf("blob %s reads back as %d bytes hashing to %s, want %d", d.Digest, n, got, d.Size)
		}
	}
	return nil
}

// TestFrontCutRequestRetried: a replica that dies while it handles a
// request (here: reads it whole, then drops the connection without an
// answer, as a SIGKILL does) must not fail skopeo's push, which retries
// (--retry-times 3) a cut connection but not a 502. Each case cuts the
// first request of one kind of a push through the load balancer of
// frontSite; a GET or HEAD is tried again on a replica by the balancer,
// anything else reaches skopeo as a cut connection. (The HEAD case
// passes without lb_retry_match too when the cut connection was a
// reused one: Go's transport then sends a HEAD again by itself.)
func TestFrontCutRequestRetried(t *testing.T) {
	skopeo := tool(t, "skopeo")
	dataDir := t.TempDir()
	replica := siteServer(t, dataDir, "\toci_registry {\n\t\tstorage "+strconv.Quote(dataDir)+"\n\t}", 0)
	target, _ := url.Parse(replica.url("/"))
	cut := &cutter{proxy: httputil.NewSingleHostReverseProxy(target)}
	// Two upstreams of one cutter: the balancer skips the one that cut
	// for fail_duration, and the push goes on through the other.
	front := siteServer(t, "", frontSite([]string{newLoopback(t, cut), newLoopback(t, cut)}), 0)
	src := writeLayout(t, ociImage(t))

	for _, c := range []struct {
		name, method, path string
	}{
		{"upload start", http.MethodPost, "/blobs/uploads/"},
		{"blob bytes", http.MethodPatch, "/blobs/uploads/"},
		{"blob commit", http.MethodPut, "/blobs/uploads/"},
		{"manifest", http.MethodPut, "/manifests/"},
		{"blob check", http.MethodHead, "/blobs/"},
	} {
		t.Run(c.name, func(t *testing.T) {
			repo := "cut/" + strings.ReplaceAll(c.name, " ", "-")
			cut.arm(func(r *http.Request) bool {
				return r.Method == c.method && strings.Contains(r.URL.Path, c.path) && strings.Contains(r.URL.Path, repo)
			})
			ref := front.addr + "/" + repo + ":v1"
			out, err := try(nil, skopeo, "copy", "--retry-times", "3", "--dest-tls-verify=false", "oci:"+src, "docker://"+ref)
			if cut.armed() {
				t.Fatalf("no %s %s was cut: the case tests nothing\n%s", c.method, c.path, out)
			}
			if err != nil {
				t.Fatalf("push with one %s %s cut: %v", c.method, c.path, err)
			}
		})
	}
}

// cutter proxies to a replica, but drops the connection of the first
// request that the armed rule matches once it has read it, without an
// answer: what a client of a replica killed mid-request sees.
type cutter struct {
	proxy *httputil.ReverseProxy
	mu    sync.Mutex
	rule  func(*http.Request) bool
}

func (c *cutter) arm(rule func(*http.Request) bool) {
	c.mu.Lock()
	c.rule = rule
	c.mu.Unlock()
}

func (c *cutter) armed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rule != nil
}

func (c *cutter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	hit := c.rule != nil && c.rule(r)
	if hit {
		c.rule = nil
	}
	c.mu.Unlock()
	if !hit {
		c.proxy.ServeHTTP(w, r)
		return
	}
	_, _ = io.Copy(io.Discard, r.Body)
	conn, _, err := w.(http.Hijacker).Hijack()
	if err != nil {
		panic(err)
	}
	conn.Close()
}
