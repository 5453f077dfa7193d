package registry

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestReadManifestBody: whatever length is declared, the bytes read are
// the body's, up to one past the limit.
func TestReadManifestBody(t *testing.T) {
	for _, tc := range []struct {
		name     string
		body     string
		declared int64
		want     string
	}{
		{"declared", "abcdef", 6, "abcdef"},
		{"unknown", "abcdef", -1, "abcdef"},
		{"shorter than declared", "abc", 6, "abc"},
		{"longer than declared", "abcdefgh", 6, "abcdefgh"},
		{"longer than the limit", strings.Repeat("x", 20), 6, strings.Repeat("x", 11)},
		{"declared past the limit", strings.Repeat("x", 20), 20, strings.Repeat("x", 11)},
		{"empty", "", 0, ""},
	} {
		got, err := readManifestBody(strings.NewReader(tc.body), tc.declared, 10)
		if err != nil || string(got) != tc.want {
			t.Errorf("%s: %q %v, want %q", tc.name, got, err, tc.want)
		}
	}
}

// TestManifestWorkTakesTurns: work past the budget waits for a release,
// and a waiter whose client leaves gives up.
func TestManifestWorkTakesTurns(t *testing.T) {
	big, err := holdManifestWork(t.Context(), 64<<20) // more than the budget: all of it
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := holdManifestWork(ctx, 1); err == nil {
		t.Fatal("work ran beside a manifest that holds the whole budget")
	}
	got := make(chan error, 1)
	go func() {
		release, err := holdManifestWork(t.Context(), 4<<20)
		if err == nil {
			release()
		}
		got <- err
	}()
	big()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
}
