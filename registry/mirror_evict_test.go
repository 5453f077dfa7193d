package registry

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/caddy-oci/caddy-oci/cache"
)

// limitMirrorCache gives env's store a limit of mirrored content.
func (env *mirrorEnv) limitMirrorCache(limit int64) {
	h := env.srv.Config.Handler.(*Handler)
	env.store.SetMirrorCache(cache.MirrorCache{Mirrored: h.Mirrored, MaxBytes: limit})
}

// evict runs an eviction pass now (after any the store started itself).
func (env *mirrorEnv) evict() cache.EvictStats {
	env.t.Helper()
	st, err := env.store.EvictMirrored()
	if err != nil {
		env.t.Fatal(err)
	}
	return st
}

// pullBlob GETs a blob through the mirror, checks its bytes against the
// digest and waits for the fill (if any) to commit.
func (env *mirrorEnv) pullBlob(repo, digest string) []byte {
	env.t.Helper()
	resp := env.do(http.MethodGet, "/v2/docker.io/"+repo+"/blobs/"+digest, nil)
	env.wantStatus(resp, http.StatusOK)
	d, err := cache.ParseDigest(digest)
	if err != nil {
		env.t.Fatal(err)
	}
	if got := cache.FromBytes(d.Algorithm, resp.body); got != d {
		env.t.Fatalf("blob %s: bytes hash to %s", d, got)
	}
	if f := env.store.Filling(env.t.Context(), d); f != nil {
		<-f.Done()
	}
	return resp.body
}

// cached reports whether repo holds digest in the store.
func (env *mirrorEnv) cached(repo, digest string) bool {
	env.t.Helper()
	d, _ := cache.ParseDigest(digest)
	_, err := env.store.HasBlob(env.t.Context(), repo, d)
	if err != nil && !errors.Is(err, cache.ErrBlobUnknown) {
		env.t.Fatal(err)
	}
	return err == nil
}

type blobData struct {
	digest string
	data   []byte
}

func layersOf(t testing.TB, img v1.Image) []blobData {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var out []blobData
	for _, l := range ls {
		d, _ := l.Digest()
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, blobData{d.String(), b})
	}
	return out
}

func TestMirrorEvictionLRU(t *testing.T) {
	env := newMirrorEnv(t)
	img := randomImage(t, 64<<10, 3)
	env.up.pushImage("library/app", "v1", img)
	ls := layersOf(t, img)
	var total, smallest int64 = 0, 1 << 62
	for _, l := range ls {
		total += int64(len(l.data))
		smallest = min(smallest, int64(len(l.data)))
	}
	// Two layers fit, three do not; evicting one gets under 90%.
	env.limitMirrorCache(total - smallest/2)

	env.pullBlob("library/app", ls[0].digest)
	env.pullBlob("library/app", ls[1].digest)
	env.pullBlob("library/app", ls[0].digest) // read again: ls[1] is now the oldest use
	env.pullBlob("library/app", ls[2].digest)
	env.evict()

	for i, want := range []bool{true, false, true} {
		if got := env.cached("docker.io/library/app", ls[i].digest); got != want {
			t.Errorf("layer %d cached = %v, want %v", i, got, want)
		}
	}
	if got, want := env.store.MirrorCacheSize(), total-int64(len(ls[1].data)); got != want {
		t.Errorf("mirror cache size = %d, want %d", got, want)
	}
	// The evicted layer comes back from upstream, byte for byte.
	if got := env.pullBlob("library/app", ls[1].digest); !bytes.Equal(got, ls[1].data) {
		t.Fatal("refetched layer differs")
	}
	if n := env.up.count("GET blobs"); n != 4 {
		t.Fatalf("upstream blob GETs = %d, want 4 (three fills and one refetch)", n)
	}
}

func TestMirrorEvictionKeepsPushed(t *testing.T) {
	env := newMirrorEnv(t)
	img := randomImage(t, 16<<10, 3)
	env.up.pushImage("library/app", "v1", img)
	ls := layersOf(t, img)
	// The first layer was pushed to a local repository before a pull
	// through the mirror linked the same digest.
	env.pushBlob("team/app", ls[0].data)
	for _, l := range ls {
		env.pullBlob("library/app", l.digest)
	}
	env.limitMirrorCache(1) // nothing mirrored fits
	if st := env.evict(); st.Size != 0 {
		t.Fatalf("stats %+v, want the two mirrored-only layers evicted and nothing left", st)
	}
	if !env.cached("team/app", ls[0].digest) || !env.cached("docker.io/library/app", ls[0].digest) {
		t.Fatal("pushed layer evicted")
	}
	for _, l := range ls[1:] {
		if env.cached("docker.io/library/app", l.digest) {
			t.Errorf("mirrored layer %s kept", l.digest)
		}
	}
	before := env.up.count("GET blobs")
	env.pullBlob("library/app", ls[0].digest)
	if n := env.up.count("GET blobs"); n != before {
		t.Fatalf("the pushed layer was fetched upstream again")
	}
}

func TestMirrorEvictionSparesBlobBeingRead(t *testing.T) {
	env := newMirrorEnv(t)
	// Larger than loopback's socket buffers, so the handler is still
	// sending when the client pauses.
	big := randomImage(t, 16<<20, 1)
	small := randomImage(t, 16<<10, 2)
	env.up.pushImage("library/big", "v1", big)
	env.up.pushImage("library/small", "v1", small)
	bl := layersOf(t, big)[0]
	sl := layersOf(t, small)
	env.pullBlob("library/big", bl.digest)
	for _, l := range sl {
		env.pullBlob("library/small", l.digest)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp, err := env.get(ctx, "/v2/docker.io/library/big/blobs/"+bl.digest)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	head := make([]byte, 1)
	if _, err := io.ReadFull(resp.Body, head); err != nil {
		t.Fatal(err)
	}
	// Used since: the big blob being read is the least recently used.
	for _, l := range sl {
		env.pullBlob("library/small", l.digest)
	}
	env.limitMirrorCache(1)
	env.evict()
	if !env.cached("docker.io/library/big", bl.digest) {
		t.Fatal("the blob being read was evicted")
	}
	for _, l := range sl {
		if env.cached("docker.io/library/small", l.digest) {
			t.Errorf("idle layer %s kept", l.digest)
		}
	}
	rest, err := io.ReadAll(resp.Body)
	if err != nil || !bytes.Equal(append(head, rest...), bl.data) {
		t.Fatalf("read of the held blob: %d bytes, %v", 1+len(rest), err)
	}
	resp.Body.Close()
	// Once the read is over, the hold goes with it. The handler may still
	// be returning: a pass that sees it held leaves it for the next.
	deadline := time.Now().Add(10 * time.Second)
	for env.cached("docker.io/library/big", bl.digest) {
		if time.Now().After(deadline) {
			t.Fatal("the blob stays held after its read ended")
		}
		env.evict()
	}
}

func TestMirrorEvictedImageRefetched(t *testing.T) {
	env := newMirrorEnv(t)
	img := randomImage(t, 4096, 2)
	env.up.pushImage("library/app", "v1", img)
	want, _ := img.Digest()
	cfg, _ := img.ConfigName()
	cfgData, _ := img.RawConfigFile()
	blobs := append(layersOf(t, img), blobData{cfg.String(), cfgData})

	pull := func() {
		t.Helper()
		for _, ref := range []string{"v1", want.String()} {
			resp := env.do(http.MethodGet, "/v2/docker.io/library/app/manifests/"+ref, nil)
			env.wantStatus(resp, http.StatusOK)
			if got := resp.Header.Get("Docker-Content-Digest"); got != want.String() {
				t.Fatalf("manifest %s: digest %s, want %s", ref, got, want)
			}
			if got := cache.FromBytes(cache.SHA256, resp.body); got.String() != want.String() {
				t.Fatalf("manifest %s: bytes hash to %s", ref, got)
			}
		}
		for _, b := range blobs {
			if got := env.pullBlob("library/app", b.digest); !bytes.Equal(got, b.data) {
				t.Fatalf("blob %s differs", b.digest)
			}
		}
	}
	pull()
	// The manifest's store write may still run after its answer: a pass
	// before it commits could not take it.
	if err := env.h.Drain(t.Context()); err != nil {
		t.Fatal(err)
	}
	env.limitMirrorCache(1)
	if st := env.evict(); st.Size != 0 {
		t.Fatalf("stats %+v, want everything evicted", st)
	}
	if _, _, err := env.store.GetManifest(t.Context(), "docker.io/library/app", cache.Digest{Algorithm: cache.SHA256, Hex: want.Hex}); !errors.Is(err, cache.ErrManifestUnknown) {
		t.Fatalf("manifest after eviction: %v", err)
	}
	env.limitMirrorCache(0) // the second pull stays put
	// Inside the tag's TTL still: the evicted tag is a miss, not an error.
	resp := env.do(http.MethodHead, "/v2/docker.io/library/app/manifests/v1", nil)
	env.wantStatus(resp, http.StatusOK)
	pull()
	if n := env.up.count("GET manifests"); n != 2 {
		t.Fatalf("upstream manifest GETs = %d, want 2 (first pull and refetch)", n)
	}
	if n := env.up.count("GET blobs"); n != 2*len(blobs) {
		t.Fatalf("upstream blob GETs = %d, want %d", n, 2*len(blobs))
	}
}

// Pulls racing eviction passes that take everything they can: every pull
// still gets whole, correct content (a miss refetches; never a 404 that
// sticks or a 500).
//
// The pulls go on past their rounds until one of them has fetched an
// evicted blob again. A pass spares whatever was read since it counted,
// and one eviction's commit waits for an fsync: on a loaded machine that
// can take long enough for the pulls to read every other blob in the
// meantime, pass after pass, so a fixed number of rounds may end before
// any blob was evicted.
func TestMirrorEvictionUnderLoad(t *testing.T) {
	env := newMirrorEnv(t)
	img := randomImage(t, 8<<10, 3)
	env.up.pushImage("library/app", "v1", img)
	want, _ := img.Digest()
	cfg, _ := img.ConfigName()
	cfgData, _ := img.RawConfigFile()
	blobs := append(layersOf(t, img), blobData{cfg.String(), cfgData})
	env.limitMirrorCache(1)

	stop := make(chan struct{})
	evicted := make(chan struct{})
	go func() {
		defer close(evicted)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := env.store.EvictMirrored(); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	const clients, rounds = 4, 8
	var wg sync.WaitGroup
	var errMu sync.Mutex
	var errList []string
	fail := func(e string) {
		errMu.Lock()
		errList = append(errList, e)
		errMu.Unlock()
	}
	// Past the rounds: until a blob was fetched again, a pull failed, or
	// a generous deadline passed.
	deadline := time.Now().Add(60 * time.Second)
	more := func() bool {
		errMu.Lock()
		failed := len(errList) > 0
		errMu.Unlock()
		return !failed && env.up.count("GET blobs") <= len(blobs) && time.Now().Before(deadline)
	}
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := 0; round < rounds || more(); round++ {
				for _, ref := range []string{"v1", want.String()} {
					resp, err := env.get(context.Background(), "/v2/docker.io/library/app/manifests/"+ref)
					if err != nil {
						fail(err.Error())
						continue
					}
					body, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					if err != nil || resp.StatusCode != http.StatusOK || cache.FromBytes(cache.SHA256, body).String() != want.String() {
						fail("manifest " + ref + ": " + resp.Status + " " + string(body))
					}
				}
				for _, b := range blobs {
					resp, err := env.get(context.Background(), "/v2/docker.io/library/app/blobs/"+b.digest)
					if err != nil {
						fail(err.Error())
						continue
					}
					body, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(body, b.data) {
						fail("blob " + b.digest + ": " + resp.Status + " " + string(body))
					}
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-evicted
	for _, e := range errList {
		t.Error(e)
	}
	if n := env.up.count("GET blobs"); n <= len(blobs) {
		t.Errorf("upstream blob GETs = %d: the passes evicted nothing, so nothing raced", n)
	}
}
