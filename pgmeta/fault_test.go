package pgmeta

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// TestPostgresDownAndBack: with PostgreSQL crashed or hung, every call
// fails within its timeout instead of holding its caller; once PostgreSQL
// is back, the same store works again at the first call, without
// reopening.
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
					if err == nil {
						t.Errorf("%s succeeded with PostgreSQL %s", name, f.name)
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
