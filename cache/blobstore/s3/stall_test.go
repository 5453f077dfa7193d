package s3

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
)

// A server that hangs (SIGSTOP) fails a Stat within stallTimeout, a
// read whose body stops flowing mid-blob, and a streamed Put it stops
// taking, instead of any of them waiting as long as its caller does;
// once it continues, the store reads again.
func TestHungServer(t *testing.T) {
	old := stallTimeout
	stallTimeout = 2 * time.Second
	t.Cleanup(func() { stallTimeout = old })
	srv := s3test.Start(t)
	st := newStore(t, srv, srv.Bucket(t), "reg/")
	c := randomBytes(64 << 20)
	d := blobstore.FromBytes(blobstore.SHA256, c)
	if _, err := st.Put(ctx(t), d, int64(len(c)), bytes.NewReader(c)); err != nil {
		t.Fatal(err)
	}
	rc, err := st.OpenRange(ctx(t), d, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := io.ReadFull(rc, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	if err := srv.Pause(); err != nil {
		t.Skip(err) // no signals on this system
	}
	resumed := false
	defer func() {
		if !resumed {
			_ = srv.Resume()
		}
	}()
	start := time.Now()
	n, err := io.Copy(io.Discard, rc)
	t.Logf("read %d more bytes, then %v after %s", n, err, time.Since(start))
	if !errors.Is(err, errStalled) || time.Since(start) > 10*time.Second {
		t.Fatalf("read from a hung server: %v after %s; want errStalled within seconds", err, time.Since(start))
	}
	start = time.Now()
	if _, err := st.Stat(ctx(t), d); !errors.Is(err, errStalled) || time.Since(start) > 5*time.Second {
		t.Fatalf("Stat on a hung server: %v after %s; want errStalled after %s", err, time.Since(start), stallTimeout)
	}
	// A streamed PUT (patient: no bound on its answer) into the hung
	// server fails once the connection takes no more bytes.
	big := randomBytes(64 << 20)
	start = time.Now()
	_, err = st.Put(ctx(t), blobstore.FromBytes(blobstore.SHA256, big), int64(len(big)), bytes.NewReader(big))
	if err == nil || time.Since(start) > 10*time.Second {
		t.Fatalf("streamed Put into a hung server: %v after %s; want an error within seconds", err, time.Since(start))
	}
	t.Logf("streamed Put: %v after %s", err, time.Since(start))
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	resumed = true
	if got, err := readAll(t, st, d); err != nil || len(got) != len(c) {
		t.Fatalf("read once the server continued: %d bytes, %v", len(got), err)
	}
}
