//go:build linux

package e2e

import (
	"fmt"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/internal/tmpfs"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// TestReplicaS3FillsUnderPushes: the S3 server's filesystem (versitygw's
// posix folder on a 96 MiB tmpfs, most of it taken by a filler) fills up
// while six clients push images, monolithic and chunked blobs through two
// replicas. Each answer is the wanted one, 507 STORAGE_FULL, or 503 with
// Retry-After; every acknowledged image and blob is whole; nothing
// refused is half-visible (a refused tag is absent or whole, a refused
// blob absent or whole); and once the filler goes the same processes take
// pushes again.
func TestReplicaS3FillsUnderPushes(t *testing.T) {
	needBinary(t)
	dir := tmpfs.Mount(t, 96<<20)
	srv := s3test.StartIn(t, dir)
	c := startClusterOn(t, srv, pgtest.Start(t), 2, "", nil)
	filler := tmpfs.FillTo(t, dir, 40<<20)

	tally := &netcutTally{answers: map[string]int{}}
	ledger := &netcutLedger{blobs: map[string]netcutBlob{}, refused: map[string]netcutBlob{},
		images: map[string]churnImage{}, refusedIm: map[string]churnImage{}}
	tally.fullOK = true
	push := func(r *server, repo string, b []byte) bool {
		ok, _, _ := tally.send(http.MethodPost, r.url("/v2/"+repo+"/blobs/uploads/?digest="+blobDigest(b)), b,
			map[string]string{"Content-Type": "application/octet-stream"}, http.StatusCreated)
		ledger.blob(repo, b, ok)
		return ok
	}
	var wg sync.WaitGroup
	full := make(chan struct{})
	var fullOnce sync.Once
	for w := range 6 {
		wg.Go(func() {
			refusals := 0
			for i := 0; refusals < 8; i++ {
				r := c.replicas[(w+i)%2]
				var ok bool
				switch w % 3 {
				case 0, 1: // images with a 1-2 MiB layer
					im := newChurnImage(t)
					im.layer = randomBytes(t, 1<<20+i*4096)
					im = rebuiltImage(im)
					repo, tag := fmt.Sprintf("full/img%d", w), fmt.Sprintf("v%d", i)
					ok = push(r, repo, im.config) && push(r, repo, im.layer)
					if ok {
						ok, _, _ = tally.send(http.MethodPut, r.url("/v2/"+repo+"/manifests/"+tag), im.manifest,
							map[string]string{"Content-Type": ociManifest}, http.StatusCreated)
						ledger.mu.Lock()
						if ok {
							ledger.images[repo+":"+tag] = im
						} else {
							ledger.refusedIm[repo+":"+tag] = im
						}
						ledger.mu.Unlock()
					}
				case 2: // chunked, 3 MiB in 1 MiB PATCHes
					b := randomBytes(t, 3<<20+i)
					ok = netcutChunked(tally, r, "full/big", b, 1<<20)
					ledger.blob("full/big", b, ok)
				}
				if !ok {
					refusals++
					fullOnce.Do(func() { close(full) })
					time.Sleep(100 * time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
	select {
	case <-full:
	default:
		t.Fatal("the pushes never filled the bucket's disk")
	}
	t.Logf("pushes until full: answers %s; slowest %s", tally, tally.slowest.Round(time.Millisecond))
	for _, b := range tally.bad {
		t.Error(b)
	}

	// Nothing acknowledged lost, nothing refused half-visible.
	refusedTags, refusedBlobs := ledger.check(t, c.replicas[1], "after the bucket's disk filled")
	t.Logf("%d images and %d blobs acknowledged, all whole; refused: %d tags (%d there whole), %d blobs (%d there whole)",
		len(ledger.images), len(ledger.blobs), len(ledger.refusedIm), refusedTags, len(ledger.refused), refusedBlobs)

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	for i, r := range c.replicas {
		im := newChurnImage(t)
		if !im.pushBlobs(r, "full/after") || !im.putManifest(r, "full/after", fmt.Sprintf("r%d", i)) {
			t.Fatalf("replica %d: a push after space was freed failed", i)
		}
		checkImage(t, r, "full/after", fmt.Sprintf("r%d", i), "after space was freed")
	}
	t.Logf("pushes on both replicas succeed %s after space was freed", time.Since(freed).Round(time.Millisecond))
	for _, r := range c.replicas {
		r.alive("after the bucket's disk filled under pushes")
	}
}

// rebuiltImage is im with its manifest made again for its config and layer.
func rebuiltImage(im churnImage) churnImage {
	im.manifest = []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}]}`,
		blobDigest(im.config), len(im.config), blobDigest(im.layer), len(im.layer)))
	im.digest = blobDigest(im.manifest)
	return im
}
