package pgmeta

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/metastore"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// TestPostgresDownAndBack: with PostgreSQL crashed or hung, every call
// fails within its timeout, with an error callers recognise as
// metastore.ErrUnavailable (the registry's 503), instead of holding its
// caller; once PostgreSQL is back, the same store works again at the
// first call, without reopening.
func TestPostgresDownAndBack(t *testing.T) {
	srv := pgtest.Start(t)
	const timeout = time.Second
	s, err := Open(context.Background(), Options{DSN: srv.NewDatabase(t), Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if err := s.CreateAPIKey("k", []byte("0")); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateSession("s", []byte("v"), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	var seq atomic.Int64
	calls := map[string]func() error{
		"APIKey":  func() error { _, err := s.APIKey("k"); return err },
		"APIKeys": func() error { _, err := s.APIKeys(); return err },
		"UpdateAPIKey": func() error {
			return s.UpdateAPIKey("k", func(b []byte) ([]byte, error) { return b, nil })
		},
		"CreateAPIKey": func() error { return s.CreateAPIKey(fmt.Sprintf("new%d", seq.Add(1)), []byte("v")) },
		"DeleteAPIKey": func() error { return s.DeleteAPIKey("gone") },
		"Session":      func() error { _, err := s.Session("s"); return err },
		"CreateSession": func() error {
			return s.CreateSession(fmt.Sprintf("new%d", seq.Add(1)), []byte("v"), time.Now().Add(time.Hour))
		},
		"DeleteSession": func() error { return s.DeleteSession("gone") },
		"AuthSecret":    func() error { _, err := s.AuthSecret("session", 32); return err },
	}
	maps.Copy(calls, metadataCalls(t, s, &seq))
	faults := []struct {
		name     string
		down, up func() error
	}{
		{"crashed", srv.Kill, srv.Start},
		{"hung", srv.Pause, srv.Resume},
	}
	for _, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			// Several pooled connections, all of which the fault breaks.
			warm(t, s)
			if err := f.down(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = f.up() }) // after a failure too; a second up is harmless
			// All at once: more callers than pooled connections, so some
			// wait for one, and that wait is bounded too.
			var wg sync.WaitGroup
			for name, call := range calls {
				wg.Go(func() {
					start := time.Now()
					err := call()
					took := time.Since(start)
					if !errors.Is(err, metastore.ErrUnavailable) {
						t.Errorf("%s with PostgreSQL %s = %v, want ErrUnavailable", name, f.name, err)
					}
					if took > timeout+time.Second {
						t.Errorf("%s took %s to fail, timeout %s", name, took, timeout)
					}
				})
			}
			wg.Wait()
			if err := f.up(); err != nil {
				t.Fatal(err)
			}
			for name, call := range calls {
				if err := call(); err != nil {
					t.Errorf("%s once PostgreSQL is back: %v", name, err)
				}
			}
		})
	}
}

// warm makes the pool hold several connections.
func warm(t *testing.T, s *Store) {
	t.Helper()
	ctx, cancel := s.call()
	defer cancel()
	var conns []interface{ Release() }
	for range 3 {
		c, err := s.pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		c.Release()
	}
}

// metadataCalls are one call of each kind of metastore.Store, on records
// made here, each repeatable (seq makes new names where a call creates).
func metadataCalls(t *testing.T, s *Store, seq *atomic.Int64) map[string]func() error {
	t.Helper()
	ctx := context.Background()
	now := time.Now()
	blob := blobstore.FromBytes(blobstore.SHA256, []byte("blob"))
	body := []byte(`{"schemaVersion":2}`)
	m := metastore.Manifest{Digest: blobstore.FromBytes(blobstore.SHA256, body), Refs: []metastore.Digest{blob}}
	if _, err := s.RecordBlob(ctx, blob, 4, now); err != nil {
		t.Fatal(err)
	}
	if err := s.LinkBlob(ctx, "r", blob, now); err != nil {
		t.Fatal(err)
	}
	if err := s.PutManifest(ctx, "r", m, body, []string{"t"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateUpload(ctx, metastore.Upload{ID: "u", Repo: "r", Started: now}, metastore.UploadQuota{}); err != nil {
		t.Fatal(err)
	}
	next := func() string { return fmt.Sprint("n", seq.Add(1)) }
	ignore := func(_ any, err error) error { return err }
	return map[string]func() error{
		"Repositories":  func() error { return ignore(s.Repositories(ctx, "", 10)) },
		"RecordBlob":    func() error { return ignore(s.RecordBlob(ctx, blob, 4, now)) },
		"Blob":          func() error { return ignore(s.Blob(ctx, blob)) },
		"LinkBlob":      func() error { return s.LinkBlob(ctx, next(), blob, now) },
		"BlobLink":      func() error { _, _, err := s.BlobLink(ctx, "r", blob); return err },
		"RenewBlobLink": func() error { return ignore(s.RenewBlobLink(ctx, "r", blob, now, now)) },
		"ReposWithBlob": func() error { return ignore(s.ReposWithBlob(ctx, blob, 0)) },
		"PutManifest":   func() error { return s.PutManifest(ctx, next(), m, body, []string{"t"}) },
		"ManifestBody":  func() error { _, _, err := s.ManifestBody(ctx, "r", m.Digest); return err },
		"Referrers":     func() error { _, _, err := s.Referrers(ctx, "r", blob, "", -1); return err },
		"Tag":           func() error { return ignore(s.Tag(ctx, "r", "t")) },
		"MoveTag":       func() error { return s.MoveTag(ctx, "r", "t", m.Digest, m.Digest) },
		"Tags":          func() error { return ignore(s.Tags(ctx, "r", "", 10)) },
		"SetTagFetched": func() error { return s.SetTagFetched(ctx, "r", "t", now) },
		"CreateUpload": func() error {
			return ignore(s.CreateUpload(ctx, metastore.Upload{ID: next(), Repo: "r", Started: now}, metastore.UploadQuota{PerRepo: 1000}))
		},
		"Upload":      func() error { return ignore(s.Upload(ctx, "u")) },
		"UploadUsage": func() error { return ignore(s.UploadUsage(ctx, "r", "o")) },
		"ExpiredUploads": func() error {
			return ignore(s.ExpiredUploads(ctx, now.Add(-time.Hour), time.Time{}, metastore.Upload{}, 10))
		},
		"UnreferencedLinks": func() error { return ignore(s.UnreferencedLinks(ctx, now, metastore.Link{}, 10)) },
		"UnlinkedBlobs":     func() error { return ignore(s.UnlinkedBlobs(ctx, now, metastore.Digest{}, 10)) },
		"MarkBlobsDeleting": func() error { return ignore(s.MarkBlobsDeleting(ctx, []metastore.Digest{blob}, now.Add(-time.Hour))) },
		"RecordUses":        func() error { return s.RecordUses(ctx, map[metastore.Digest]time.Time{blob: now}) },
		"BlobUses":          func() error { return ignore(s.BlobUses(ctx, metastore.Digest{}, 10)) },
		"EvictBlobs": func() error {
			return ignore(s.EvictBlobs(ctx, []metastore.Eviction{{Digest: blob, Repos: []string{"nobody"}, Used: now}}))
		},
		"AddMirrorBytes":     func() error { return ignore(s.AddMirrorBytes(ctx, 1)) },
		"ReserveUploadBytes": func() error { return s.ReserveUploadBytes(ctx, "u", 1, metastore.UploadQuota{Bytes: 1 << 40}) },
		"ReleaseUploadBytes": func() error { return s.ReleaseUploadBytes(ctx, "u") },
	}
}
