package s3

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
)

// TestDeleteFencedByTime: a GC delete prepared while its lease held and
// sent once the lease's time had passed (the process stopped in between,
// and meanwhile another replica finished the sweep and a push wrote the
// digest's bytes again) is refused by the server: the bytes pushed again
// stay. A delete sent in time deletes.
func TestDeleteFencedByTime(t *testing.T) {
	srv := s3test.Start(t)
	s := newStore(t, srv, srv.Bucket(t), "registry")
	ctx := context.Background()
	b := []byte("a blob GC marked, then pushed again")
	d, err := blobstore.ParseDigest(fmt.Sprintf("sha256:%x", sha256.Sum256(b)))
	if err != nil {
		t.Fatal(err)
	}
	put := func() {
		if _, err := s.Put(ctx, d, int64(len(b)), bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
	}
	put()
	s.beforeSend = func() {
		// Stopped here past the deadline; the blob is deleted and pushed
		// again meanwhile.
		time.Sleep(2500 * time.Millisecond)
		put()
	}
	err = s.Delete(blobstore.WithNotAfter(ctx, time.Now().Add(1500*time.Millisecond)), d)
	s.beforeSend = nil
	if !errors.Is(err, errTooLate) {
		t.Errorf("a delete sent after its time: %v, want it refused as too late", err)
	}
	rc, err := s.Open(ctx, d)
	if err != nil {
		t.Fatalf("the blob pushed again is gone: %v", err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, b) {
		t.Fatalf("the blob pushed again reads %q", got)
	}

	if err := s.Delete(blobstore.WithNotAfter(ctx, time.Now().Add(10*time.Second)), d); err != nil {
		t.Fatalf("a delete in time: %v", err)
	}
	if _, err := s.Open(ctx, d); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("after a delete in time: %v, want not found", err)
	}
	if err := s.Delete(blobstore.WithNotAfter(ctx, time.Now().Add(500*time.Millisecond)), d); !errors.Is(err, errTooLate) {
		t.Errorf("a delete with less than a second left: %v, want it refused", err)
	}
}
