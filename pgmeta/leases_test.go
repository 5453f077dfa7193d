package pgmeta

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/coord"
	"github.com/caddy-oci/caddy-oci/cache/coord/coordtest"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// TestLeases runs the lease contract with each instance its own Store
// (its own pool) on one database, as replicas are.
func TestLeases(t *testing.T) {
	coordtest.Run(t, func(t *testing.T) func() coord.Leases {
		dsn := pgtest.NewDatabase(t)
		return func() coord.Leases {
			s, err := Open(context.Background(), Options{DSN: dsn})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(s.Close)
			return s.Leases()
		}
	})
}

// TestLeaseHolderLosesDatabase: a replica holding a lease (Hold) whose
// database goes away stops its work (held ends) by the lease's deadline,
// before another replica could take the key; lease calls fail with
// ErrUnavailable within the timeout; once the database is back a new
// Hold succeeds without reopening anything.
func TestLeaseHolderLosesDatabase(t *testing.T) {
	srv := pgtest.Start(t)
	const timeout = time.Second
	s, err := Open(context.Background(), Options{DSN: srv.NewDatabase(t), Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	const ttl = 2 * time.Second
	held, release, ok, err := coord.Hold(context.Background(), s.Leases(), "gc", ttl)
	if err != nil || !ok {
		t.Fatalf("Hold: %v, %v", ok, err)
	}
	defer release()
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Start() })
	killed := time.Now()
	select {
	case <-held.Done():
		if !errors.Is(context.Cause(held), coord.ErrExpired) {
			t.Errorf("held ended with %v, want ErrExpired", context.Cause(held))
		}
		if took := time.Since(killed); took > ttl {
			t.Errorf("held ended %v after the database died, lease ttl %v: past its deadline", took, ttl)
		}
	case <-time.After(ttl + 2*time.Second):
		t.Fatal("held still alive well past the lease's deadline with the database gone")
	}
	start := time.Now()
	if _, _, err := s.Leases().Acquire(context.Background(), "other", ttl); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Acquire with the database down: %v, want ErrUnavailable", err)
	}
	if took := time.Since(start); took > timeout+time.Second {
		t.Errorf("Acquire took %v to fail, timeout %v", took, timeout)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	// The dead holder's row expired meanwhile: the key is free again.
	_, release2, ok, err := coord.Hold(context.Background(), s.Leases(), "gc", ttl)
	if err != nil || !ok {
		t.Fatalf("Hold once the database is back: %v, %v", ok, err)
	}
	release2()
}
