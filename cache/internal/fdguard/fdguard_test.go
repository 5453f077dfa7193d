//go:build linux

package fdguard

import (
	"errors"
	"os"
	"syscall"
	"testing"
)

// TestAdmit lowers this test process's limit of open files, opens files
// until none is left, and checks that Admit refuses with EMFILE, and
// admits again once more than half the headroom is free at the top.
func TestAdmit(t *testing.T) {
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	lim := old
	lim.Cur = 64
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skipf("cannot lower the limit of open files: %v", err)
	}
	defer syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old)
	if err := Admit(); err != nil {
		t.Fatalf("with files to spare: %v", err)
	}
	var held []*os.File
	defer func() {
		for _, f := range held {
			f.Close()
		}
	}()
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			if !errors.Is(err, syscall.EMFILE) {
				t.Fatal(err)
			}
			break
		}
		held = append(held, f)
	}
	err := Admit()
	if err == nil || !errors.Is(err, syscall.EMFILE) {
		t.Fatalf("with no file left: %v, want EMFILE", err)
	}
	// The highest numbers free again, as when the last files opened
	// close: half the headroom is not enough (room for checks at once).
	for range Headroom / 2 {
		held[len(held)-1].Close()
		held = held[:len(held)-1]
	}
	if err := Admit(); err == nil {
		t.Fatalf("with %d files free: admitted", Headroom/2)
	}
	held[len(held)-1].Close()
	held = held[:len(held)-1]
	if err := Admit(); err != nil {
		t.Fatalf("with %d files free: %v", Headroom/2+1, err)
	}
}
