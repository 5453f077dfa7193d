//go:build linux

package blobfile

import (
	"errors"
	"os"
	"sync"
	"testing"

	"github.com/caddy-oci/caddy-oci/internal/tmpfs"
)

const mib = 1 << 20

// spaceLog records what the guard reports.
type spaceLog struct {
	mu      sync.Mutex
	reached []bool // each change of state
}

func (l *spaceLog) StorageSpace(_ string, _, _ int64, reached bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := len(l.reached); n == 0 || l.reached[n-1] != reached {
		l.reached = append(l.reached, reached)
	}
}

func (l *spaceLog) states() []bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]bool(nil), l.reached...)
}

func TestSpaceAdmit(t *testing.T) {
	fs := tmpfs.Mount(t, 16*mib)
	obs := new(spaceLog)
	g := NewSpace(fs, Reserve{Bytes: 4 * mib}, nil, obs)
	if err := g.Admit(8 * mib); err != nil {
		t.Fatalf("8 MiB on an empty 16 MiB filesystem with 4 MiB reserved: %v", err)
	}
	if err := g.Admit(13 * mib); !errors.Is(err, ErrStorageFull) {
		t.Fatalf("13 MiB would cross the reserve: %v, want ErrStorageFull", err)
	}

	filler := tmpfs.FillTo(t, fs, 6*mib)
	for _, tc := range []struct {
		size int64
		ok   bool
	}{
		{1 * mib, true},
		{2 * mib, true},  // leaves just the reserve
		{3 * mib, false}, // would leave less than 4 MiB
		{-1, false},      // unknown length: a window must fit
		{0, true},
	} {
		if err := g.Admit(tc.size); (err == nil) != tc.ok {
			t.Errorf("Admit(%d) with 6 MiB free = %v, want ok=%v", tc.size, err, tc.ok)
		}
	}
	if got := obs.states(); len(got) != 1 || got[0] {
		t.Errorf("states %v before the reserve is reached, want [false]", got)
	}

	os.Remove(filler)
	filler = tmpfs.FillTo(t, fs, 3*mib)
	if err := g.Admit(0); !errors.Is(err, ErrStorageFull) {
		t.Errorf("Admit(0) inside the reserve = %v, want ErrStorageFull", err)
	}
	os.Remove(filler)
	if err := g.Admit(8 * mib); err != nil {
		t.Errorf("after freeing space: %v", err)
	}
	if got := obs.states(); len(got) != 3 || got[0] || !got[1] || got[2] {
		t.Errorf("states %v, want [false true false]: reached once, left once", got)
	}

	// The percentage of the filesystem applies when it is the larger.
	g.reserve = Reserve{Bytes: 1 * mib, Percent: 50}
	if err := g.Admit(7 * mib); err != nil {
		t.Errorf("7 MiB of 16 with half reserved: %v", err)
	}
	if err := g.Admit(9 * mib); !errors.Is(err, ErrStorageFull) {
		t.Errorf("9 MiB of 16 with half reserved = %v, want ErrStorageFull", err)
	}
}
