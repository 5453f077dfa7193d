package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"sync"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

var gcBenchImages = flag.Int("gcbench.images", 1000, "images BenchmarkGC builds (e.g. 10000, 50000)")

const (
	// gcBenchPerRepo: images (manifests) per repository.
	gcBenchPerRepo = 5
	// gcBenchChanged: one image in this many is deleted between the full
	// and the incremental pass (1%).
	gcBenchChanged = 100
)

// gcBenchImage is one image the benchmark built.
type gcBenchImage struct {
	repo     string
	manifest Digest
}

// BenchmarkGC builds -gcbench.images images (a shared base layer, a
// layer and a config of their own, gcBenchPerRepo per repository) and
// measures, per iteration, a full pass over the unchanged store and an
// incremental pass after 1% of the images were deleted. Reported: ms per
// full pass, ms per incremental pass, and incremental/full.
func BenchmarkGC(b *testing.B) {
	n := *gcBenchImages
	// The smallest grace period: everything built is old enough to go.
	s := openStore(b, Options{GCGrace: time.Millisecond})
	images := buildGCBenchImages(b, s, n)
	time.Sleep(10 * time.Millisecond)
	if _, err := s.GC(); err != nil { // settles the marks of the pushes
		b.Fatal(err)
	}

	var full, incr time.Duration
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		err := s.update(func(txn *badger.Txn) error { return txn.Delete([]byte(keyGCFull)) })
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		st, err := s.GC()
		full += time.Since(start)
		if err != nil || !st.Full {
			b.Fatalf("full pass = %+v, %v", st, err)
		}

		b.StopTimer()
		deleted := 0
		for j := i % gcBenchChanged; j < len(images); j += gcBenchChanged {
			err := s.DeleteManifest(b.Context(), images[j].repo, images[j].manifest)
			if err == nil {
				deleted++
			}
		}
		time.Sleep(10 * time.Millisecond)
		b.StartTimer()
		start = time.Now()
		st, err = s.GC()
		incr += time.Since(start)
		if err != nil || st.Full {
			b.Fatalf("incremental pass = %+v, %v", st, err)
		}
		if deleted > 0 && st.BlobsRemoved < deleted {
			b.Fatalf("incremental pass after %d deletes = %+v", deleted, st)
		}
	}
	fullMs := float64(full.Microseconds()) / 1e3 / float64(b.N)
	incrMs := float64(incr.Microseconds()) / 1e3 / float64(b.N)
	b.ReportMetric(fullMs, "full-ms/pass")
	b.ReportMetric(incrMs, "incr-ms/pass")
	b.ReportMetric(incrMs/fullMs, "incr/full")
}

// buildGCBenchImages pushes n images into s, a few writers at a time.
func buildGCBenchImages(b *testing.B, s *Store, n int) []gcBenchImage {
	b.Helper()
	base := []byte("base layer")
	baseD := digestOf(base)
	if _, err := s.PutBlob(b.Context(), baseD, int64(len(base)), bytes.NewReader(base)); err != nil {
		b.Fatal(err)
	}
	images := make([]gcBenchImage, n)
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	work := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				im, err := pushGCBenchImage(s, i, baseD)
				if err != nil {
					select {
					case errs <- err:
					default:
					}
					continue
				}
				images[i] = im
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	return images
}

// pushGCBenchImage pushes image i as a client would: blobs, links, manifest.
func pushGCBenchImage(s *Store, i int, base Digest) (gcBenchImage, error) {
	repo := fmt.Sprintf("bench/r%06d", i/gcBenchPerRepo)
	layers := []Digest{base}
	var config Digest
	for _, c := range []string{"config", "layer"} {
		body := []byte(fmt.Sprintf("%s of image %d", c, i))
		d := digestOf(body)
		if _, err := s.PutBlob(context.Background(), d, int64(len(body)), bytes.NewReader(body)); err != nil {
			return gcBenchImage{}, err
		}
		if c == "config" {
			config = d
		} else {
			layers = append(layers, d)
		}
	}
	for _, d := range append([]Digest{config}, layers...) {
		if err := s.LinkBlob(context.Background(), repo, d); err != nil {
			return gcBenchImage{}, err
		}
	}
	doc := map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        desc{"application/vnd.oci.image.config.v1+json", config.String(), 1},
		"layers": []desc{
			{"application/vnd.oci.image.layer.v1.tar", layers[0].String(), 1},
			{"application/vnd.oci.image.layer.v1.tar", layers[1].String(), 1},
		},
	}
	body, err := json.Marshal(doc)
	if err != nil {
		return gcBenchImage{}, err
	}
	m := Manifest{Digest: digestOf(body), MediaType: "application/vnd.oci.image.manifest.v1+json"}
	tag := fmt.Sprintf("v%d", i%gcBenchPerRepo)
	if err := s.PutManifest(context.Background(), repo, m, body, []string{tag}); err != nil {
		return gcBenchImage{}, err
	}
	return gcBenchImage{repo, m.Digest}, nil
}
