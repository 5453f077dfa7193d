//go:build unix

package pgmeta

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/metastore"
	"github.com/caddy-oci/caddy-oci/internal/procstop"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// TestStaleWritesAfterStall: a write whose answer never came (its
// connection's server process stopped: SIGSTOP, a frozen VM, a stalled
// network path) fails on the replica once its timeout passes, and the
// client is told so; but its statement waits in the server's socket and
// runs when the process continues. Meanwhile another replica made a
// newer write of the same row and acknowledged it. The late statement
// must not undo that: a DeleteTag landing after a newer move loses an
// acknowledged tag, and a tag create landing after a newer delete brings
// a deleted tag back on an older digest.
//
// Only the one backend serving the stalled replica is stopped, so the
// newer write goes through while the old one waits, as it does when one
// replica's path to the database stalls.
func TestStaleWritesAfterStall(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	ctx := context.Background()
	put := func(t *testing.T, s *Store, name string) metastore.Digest {
		body := fmt.Appendf(nil, `{"schemaVersion":2,"name":%q}`, name)
		m := metastore.Manifest{Digest: blobstore.FromBytes(blobstore.SHA256, body), MediaType: "application/vnd.oci.image.manifest.v1+json"}
		if err := s.PutManifest(ctx, "r", m, body, nil); err != nil {
			t.Fatal(err)
		}
		return m.Digest
	}
	var zero metastore.Digest
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, s *Store, a, b metastore.Digest, tag string)
		// stalled is the write sent to the stopped backend.
		stalled func(s *Store, a, b metastore.Digest, tag string) error
		// newer is the acknowledged write made meanwhile elsewhere.
		newer func(t *testing.T, s *Store, a, b metastore.Digest, tag string)
		want  func(a, b metastore.Digest) metastore.Digest // zero: no tag
	}{
		{
			name: "DeleteTag after a newer move",
			setup: func(t *testing.T, s *Store, a, b metastore.Digest, tag string) {
				if err := s.MoveTag(ctx, "r", tag, zero, a); err != nil {
					t.Fatal(err)
				}
			},
			stalled: func(s *Store, a, b metastore.Digest, tag string) error { return s.DeleteTag(ctx, "r", tag) },
			newer: func(t *testing.T, s *Store, a, b metastore.Digest, tag string) {
				if err := s.MoveTag(ctx, "r", tag, a, b); err != nil {
					t.Fatal(err)
				}
			},
			want: func(a, b metastore.Digest) metastore.Digest { return b },
		},
		{
			name:    "MoveTag's create after a newer create and delete",
			setup:   func(t *testing.T, s *Store, a, b metastore.Digest, tag string) {},
			stalled: func(s *Store, a, b metastore.Digest, tag string) error { return s.MoveTag(ctx, "r", tag, zero, a) },
			newer: func(t *testing.T, s *Store, a, b metastore.Digest, tag string) {
				if err := s.MoveTag(ctx, "r", tag, zero, b); err != nil {
					t.Fatal(err)
				}
				if err := s.DeleteTag(ctx, "r", tag); err != nil {
					t.Fatal(err)
				}
			},
			want: func(a, b metastore.Digest) metastore.Digest { return zero },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// One connection, so the backend stopped is the one the
			// stalled write goes to.
			s, err := Open(ctx, Options{DSN: dsn + "&pool_max_conns=1", Timeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(s.Close)
			other, err := Open(ctx, Options{DSN: dsn})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(other.Close)
			a, b := put(t, s, tc.name+" a"), put(t, s, tc.name+" b")
			tag := fmt.Sprintf("t%d", time.Now().UnixNano())
			// The same write once on the connection, so that pgx has its
			// statements prepared there: a statement only being prepared
			// when the backend stopped would never run.
			warm := tag + "-warm"
			tc.setup(t, s, a, b, warm)
			_ = tc.stalled(s, a, b, warm)
			tc.setup(t, s, a, b, tag)
			var pid int
			if err := s.pool.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
				t.Fatal(err)
			}
			if err := procstop.Stop(pid); err != nil {
				t.Skip(err)
			}
			stopped := true
			defer func() {
				if stopped {
					_ = procstop.Continue(pid)
				}
			}()
			if err := tc.stalled(s, a, b, tag); err == nil {
				t.Fatal("the write to a stopped backend succeeded")
			}
			tc.newer(t, other, a, b, tag)
			if err := procstop.Continue(pid); err != nil {
				t.Fatal(err)
			}
			stopped = false
			// The stalled backend runs what waited in its socket, then
			// finds its client gone and exits.
			deadline := time.Now().Add(10 * time.Second)
			for {
				var alive bool
				if err := other.pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)", pid).Scan(&alive); err != nil {
					t.Fatal(err)
				}
				if !alive {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("backend %d still there 10 s after it continued", pid)
				}
				time.Sleep(20 * time.Millisecond)
			}
			ti, err := other.Tag(ctx, "r", tag)
			want := tc.want(a, b)
			switch {
			case want.IsZero() && err == nil:
				t.Errorf("tag at %s after the newer acknowledged delete: the stalled write landed late", ti.Digest)
			case !want.IsZero() && err != nil:
				t.Errorf("tag: %v; want it at %s, the newer acknowledged write's: the stalled write landed late", err, want)
			case !want.IsZero() && ti.Digest != want:
				t.Errorf("tag at %s, want %s", ti.Digest, want)
			}
		})
	}
}
