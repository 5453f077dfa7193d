package pgmeta

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/metastore"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// TestCreateManifestOneWinnerAcrossReplicas: two replicas (two stores,
// each with its own pool, on one database) create-push at once, both
// inside their transactions before either writes the contended row: a
// table lock taken in a third session holds both writes of that table
// until both wait on it. Each has read (and any check made by reading
// would have passed) what the other is about to change; when the lock
// goes, exactly one may commit. A check by SELECT before the write, in
// the same Read Committed transaction, lets both through here.
func TestCreateManifestOneWinnerAcrossReplicas(t *testing.T) {
	for _, c := range []struct {
		name, table string
		want        error
		// second is the other replica's push of first (m, media type).
		second func(m metastore.Manifest, body []byte) (metastore.Manifest, []byte)
	}{
		{"one tag, two manifests", "tags", metastore.ErrTagMoved,
			func(metastore.Manifest, []byte) (metastore.Manifest, []byte) {
				body := []byte(`{"schemaVersion":2,"by":"b"}`)
				return metastore.Manifest{Digest: blobstore.FromBytes(blobstore.SHA256, body), MediaType: "application/vnd.oci.image.manifest.v1+json"}, body
			}},
		{"one manifest, two media types", "manifests", metastore.ErrManifestRetyped,
			func(m metastore.Manifest, body []byte) (metastore.Manifest, []byte) {
				m.MediaType = "application/vnd.oci.image.index.v1+json"
				return m, body
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dsn := pgtest.NewDatabase(t)
			a, b := openDSN(t, dsn), openDSN(t, dsn)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()

			bodyA := []byte(`{"schemaVersion":2,"by":"a"}`)
			mA := metastore.Manifest{Digest: blobstore.FromBytes(blobstore.SHA256, bodyA), MediaType: "application/vnd.oci.image.manifest.v1+json"}
			mB, bodyB := c.second(mA, bodyA)

			unlock := lockTable(t, dsn, c.table)
			errs := make(chan error, 2)
			go func() { errs <- a.CreateManifest(ctx, "r", mA, bodyA, []string{"v1"}) }()
			go func() { errs <- b.CreateManifest(ctx, "r", mB, bodyB, []string{"v1"}) }()
			waitWaiters(t, a, 2)
			unlock()

			var won, lost int
			for range 2 {
				switch err := <-errs; {
				case err == nil:
					won++
				case errors.Is(err, c.want):
					lost++
				default:
					t.Fatalf("CreateManifest: %v, want nil or %v", err, c.want)
				}
			}
			if won != 1 || lost != 1 {
				t.Fatalf("%d creates won, %d lost; want one each", won, lost)
			}
			// The tag and the manifest's type are the winner's, whole.
			ti, err := a.Tag(ctx, "r", "v1")
			if err != nil {
				t.Fatal(err)
			}
			m, err := a.Manifest(ctx, "r", ti.Digest)
			if err != nil {
				t.Fatal(err)
			}
			if !(ti.Digest == mA.Digest && m.MediaType == mA.MediaType || ti.Digest == mB.Digest && m.MediaType == mB.MediaType) {
				t.Fatalf("v1 at %s as %s: a mix of the two pushes", ti.Digest, m.MediaType)
			}
		})
	}
}

// lockTable takes, in a session of its own, a lock on table that lets
// reads through and holds every write; unlock ends it.
func lockTable(t *testing.T, dsn, table string) (unlock func()) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE "+pgx.Identifier{table}.Sanitize()+" IN SHARE MODE"); err != nil {
		t.Fatal(err)
	}
	done := false
	unlock = func() {
		if !done {
			done = true
			_ = tx.Rollback(ctx)
			_ = conn.Close(ctx)
		}
	}
	t.Cleanup(unlock)
	return unlock
}

// waitWaiters waits until n sessions of s's database wait on a lock.
func waitWaiters(t *testing.T, s *Store, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var got int
		if err := s.pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions wait on a lock, want %d", got, n)
		}
		time.Sleep(10 * time.Millisecond) // polling the database, which nothing here can signal
	}
}
