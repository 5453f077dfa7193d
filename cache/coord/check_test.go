package coord

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestCheck: a context of Hold's may act on its lease only while the
// lease's deadline is ahead, whether or not the renewal goroutine has
// ended it yet (a process stopped past its deadline and woken runs its
// goroutines in any order); other contexts answer their own error only.
func TestCheck(t *testing.T) {
	ls := NewLocal()
	held, release, ok, err := Hold(context.Background(), ls, "check", time.Minute)
	if err != nil || !ok {
		t.Fatalf("Hold: %v %v", ok, err)
	}
	derived, cancel := context.WithCancel(held)
	defer cancel()
	if err := Check(derived); err != nil {
		t.Fatalf("a live lease: %v", err)
	}
	release()
	if err := Check(derived); err == nil {
		t.Fatal("a released lease: nil")
	}

	// A deadline passed that nothing has noticed yet: the context is
	// still live, the lease is not.
	l, ok, err := ls.Acquire(context.Background(), "stale", 20*time.Millisecond)
	if err != nil || !ok {
		t.Fatalf("Acquire: %v %v", ok, err)
	}
	stale := context.WithValue(context.Background(), heldLease{}, l)
	if err := Check(stale); err != nil {
		t.Fatalf("before the deadline: %v", err)
	}
	time.Sleep(30 * time.Millisecond)
	if err := Check(stale); !errors.Is(err, ErrExpired) {
		t.Fatalf("past the deadline: %v, want ErrExpired", err)
	}
	if err := Check(context.Background()); err != nil {
		t.Fatalf("a context Hold did not make: %v", err)
	}
}
