package s3

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
)

// TestSessionsSideBySide: upload sessions begun and ended side by side,
// as a busy registry has them. versitygw's posix backend keeps objects as
// files and removes a folder once its last object goes, parents
// included; a PutObject into a sibling folder at that moment fails with
// 409 ExistingObjectIsDirectory (its mkdir found the parent gone). Seen
// in the e2e client drill as a 503 to a client's PATCH. Two sessions at
// a time, so the shared uploads/ folder empties and goes often (without
// the retry, about 2% of the sessions failed here). Every Append and
// Cancel must succeed.
func TestSessionsSideBySide(t *testing.T) {
	srv := s3test.Start(t)
	s := newStore(t, srv, srv.Bucket(t), "p/")
	ctx := context.Background()
	deadline := time.Now().Add(5 * time.Second)
	var rounds, failures atomic.Int64
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				ss, err := s.NewSession(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				rounds.Add(1)
				if _, err := ss.Append(ctx, 0, strings.NewReader("the bytes of a small chunk")); err != nil {
					if failures.Add(1) <= 3 {
						t.Errorf("append: %v", err)
					}
				}
				if err := ss.Cancel(ctx); err != nil {
					if failures.Add(1) <= 3 {
						t.Errorf("cancel: %v", err)
					}
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%d sessions, %d failed", rounds.Load(), failures.Load())
}
