package caddymodule

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// TestRequestGate: a config's release runs once, when it has been cleaned
// up and its last request (late ones included) has left; never before.
func TestRequestGate(t *testing.T) {
	g := new(requestGate)
	runs := 0
	release := func() { runs++ }
	if g.enter() {
		t.Fatal("released before close")
	}
	if g.close(release) || runs != 0 {
		t.Fatal("released with a request running")
	}
	if g.enter() { // a late request (an HTTP/2 stream): served, counted
		t.Fatal("released with a request running")
	}
	g.leave()
	if runs != 0 {
		t.Fatal("released with the late request running")
	}
	g.leave()
	if runs != 1 {
		t.Fatalf("release ran %d times after the last request left, want 1", runs)
	}
	if !g.enter() {
		t.Fatal("a request after the release is not told so")
	}
	g.leave()
	if runs != 1 {
		t.Fatalf("release ran %d times, want 1", runs)
	}

	idle := new(requestGate)
	if !idle.close(release) || runs != 2 {
		t.Fatal("an idle config is not released at once")
	}
	var never *requestGate // Provision failed before making it
	if !never.close(release) || runs != 3 {
		t.Fatal("a config without a gate is not released at once")
	}
}

// BenchmarkRequestGate is the gate's cost per request (one enter and one
// leave), every core entering at once: to set beside a request's own
// cost (a manifest GET takes tens of microseconds).
func BenchmarkRequestGate(b *testing.B) {
	var g requestGate
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if g.enter() {
				b.Fatal("released")
			}
			g.leave()
		}
	})
}

// stopCaddy stops Caddy and waits until the stopped config has given its
// storage back (Released): a test removes its folders next, and a store
// still open over a removed folder cannot close.
func stopCaddy(t testing.TB) {
	t.Helper()
	_ = caddy.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := Released(ctx); err != nil {
		t.Errorf("the storage was still held 30 s after caddy.Stop: %v", err)
	}
}

// TestStoreLifePerFolder: opens and closes of one database folder take
// turns (however the folder is spelled), and another folder's do not
// wait for them: a close that never ends holds up its own folder only.
func TestStoreLifePerFolder(t *testing.T) {
	dir := t.TempDir()
	a := storeLife(filepath.Join(dir, "a", "meta"))
	if b := storeLife(filepath.Join(dir, "a", ".", "x", "..", "meta")); b != a {
		t.Error("one folder spelled two ways has two locks")
	}
	a.Lock() // a close that never ends
	defer a.Unlock()
	other := storeLife(filepath.Join(dir, "b", "meta"))
	if !other.TryLock() {
		t.Fatal("another folder's open waits for this one's close")
	}
	other.Unlock()
}
