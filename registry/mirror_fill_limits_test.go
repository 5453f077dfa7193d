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

	"github.com/caddy-oci/caddy-oci/cache"
)

// wantNotStored fails if the store holds blob layer, or a fill of it runs.
func (env *mirrorEnv) wantNotStored(layer string) {
	env.t.Helper()
	d, err := cache.ParseDigest(layer)
	if err != nil {
		env.t.Fatal(err)
	}
	if f := env.store.Filling(env.t.Context(), d); f != nil {
		<-f.Done()
	}
	if _, err := env.store.StatBlob(env.t.Context(), d); !errors.Is(err, cache.ErrBlobUnknown) {
		env.t.Fatalf("store holds the refused blob (stat err %v)", err)
	}
}

func TestMirrorBlobOverSizeLimit(t *testing.T) {
	for _, tc := range []struct {
		name     string
		noLength bool
	}{
		{"declared length", false},
		{"unknown length", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newMirrorEnv(t, func(c *MirrorConfig) { c.MaxBlobSize = 256 << 10 })
			env.up.set(func(u *fakeUpstream) { u.noLength = tc.noLength })
			small, big := randomImage(t, 100<<10, 1), randomImage(t, 1<<20, 1)
			env.up.pushImage("library/small", "v1", small)
			env.up.pushImage("library/big", "v1", big)

			bigLayer, _ := layerOf(t, big)
			path := "/v2/docker.io/library/big/blobs/" + bigLayer
			env.wantError(env.do(http.MethodGet, path, nil), http.StatusRequestEntityTooLarge, CodeSizeInvalid)
			env.wantNotStored(bigLayer)
			if !tc.noLength {
				// A HEAD learns the length from upstream's HEAD.
				env.wantStatus(env.do(http.MethodHead, path, nil), http.StatusRequestEntityTooLarge)
			}
			// Again, now that a HEAD may have confirmed it: still refused.
			env.wantError(env.do(http.MethodGet, path, nil), http.StatusRequestEntityTooLarge, CodeSizeInvalid)
			env.wantNotStored(bigLayer)

			smallLayer, data := layerOf(t, small)
			got := env.do(http.MethodGet, "/v2/docker.io/library/small/blobs/"+smallLayer, nil)
			env.wantStatus(got, http.StatusOK)
			if !bytes.Equal(got.body, data) {
				t.Fatal("blob under the limit differs")
			}
		})
	}
}

func TestMirrorConcurrentFillCap(t *testing.T) {
	env := newMirrorEnv(t, func(c *MirrorConfig) {
		c.MaxConcurrentFills = 1
		c.FillSlotWait = time.Second
	})
	a, b := randomImage(t, 512<<10, 1), randomImage(t, 512<<10, 1)
	env.up.pushImage("library/a", "v1", a)
	env.up.pushImage("library/b", "v1", b)
	layerA, dataA := layerOf(t, a)
	layerB, dataB := layerOf(t, b)
	gate := make(chan struct{})
	env.up.set(func(u *fakeUpstream) { u.gate = gate })
	openGate := sync.OnceFunc(func() { close(gate) })
	t.Cleanup(openGate) // before the servers close, on a failure too
	pathA := "/v2/docker.io/library/a/blobs/" + layerA
	pathB := "/v2/docker.io/library/b/blobs/" + layerB

	// The first GET starts the only fill allowed, held by upstream; a
	// second GET of the same blob joins it without a slot.
	var bodies []io.ReadCloser
	for range 2 {
		resp, err := env.get(context.Background(), pathA)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET of the blob being filled: %d", resp.StatusCode)
		}
		if _, err := io.ReadFull(resp.Body, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		bodies = append(bodies, resp.Body)
	}

	// Another blob would need a second fill: 429 after the wait.
	// (Bounded: without the cap it would wait for the held upstream.)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := env.get(ctx, pathB)
	if err != nil {
		t.Fatalf("GET past the cap: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("GET past the cap: %d, Retry-After %q; want 429 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	env.wantNotStored(layerB)

	openGate()
	for _, body := range bodies {
		rest, err := io.ReadAll(body)
		if err != nil || !bytes.Equal(append(dataA[:1:1], rest...), dataA) {
			t.Fatalf("joined reader got %d bytes, err %v", len(rest)+1, err)
		}
	}
	// The slot frees once the fill is done; the next cold GET takes it.
	got := env.do(http.MethodGet, pathB, nil)
	env.wantStatus(got, http.StatusOK)
	if !bytes.Equal(got.body, dataB) {
		t.Fatal("blob differs")
	}
}
