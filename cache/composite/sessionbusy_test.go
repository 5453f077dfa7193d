package composite

import (
	"errors"
	"io"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache"
)

// TestCancelStopsArrivingChunk: while a chunk trickles into a session on
// this replica, a commit of that session is refused at once
// (ErrOffsetMismatch), and a cancel stops the chunk (which ends in
// ErrUploadUnknown) and removes the session, without waiting for the
// client's body.
func TestCancelStopsArrivingChunk(t *testing.T) {
	each(t, func(t *testing.T, replica replicas) {
		a := replica()
		u, err := a.OpenUpload(ctx(t), "team/app", "")
		if err != nil {
			t.Fatal(err)
		}
		pr, pw := io.Pipe()
		defer pw.Close()
		go func() {
			for {
				if _, err := pw.Write([]byte("x")); err != nil {
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
		}()
		appended := make(chan error, 1)
		go func() {
			_, err := a.AppendUpload(ctx(t), "team/app", u.ID, 0, pr)
			appended <- err
		}()
		time.Sleep(300 * time.Millisecond) // the chunk holds the session

		start := time.Now()
		if _, err := a.CommitUpload(ctx(t), "team/app", u.ID, cache.FromBytes(cache.SHA256, nil)); !errors.Is(err, cache.ErrOffsetMismatch) {
			t.Fatalf("commit while a chunk arrives: %v, want ErrOffsetMismatch", err)
		}
		if err := a.CancelUpload(ctx(t), "team/app", u.ID); err != nil {
			t.Fatalf("cancel while a chunk arrives: %v", err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Fatalf("commit and cancel took %s", d)
		}
		select {
		case err := <-appended:
			if !errors.Is(err, cache.ErrUploadUnknown) {
				t.Fatalf("the cancelled chunk: %v, want ErrUploadUnknown", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the chunk still arrives 10 s after its session was cancelled")
		}
		if _, err := a.GetUpload(ctx(t), "team/app", u.ID); !errors.Is(err, cache.ErrUploadUnknown) {
			t.Fatalf("the cancelled session: %v", err)
		}
	})
}
