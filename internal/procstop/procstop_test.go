//go:build linux

package procstop

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"
)

// TestStopWaitsForTheProcess: once Stop returns, every thread of a real
// running process is stopped; Continue runs it again.
func TestStopWaitsForTheProcess(t *testing.T) {
	// A busy shell loop: a thread that is running when the signal comes.
	cmd := exec.Command("sh", "-c", "while :; do :; done")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	pid := cmd.Process.Pid
	for range 20 {
		if err := Stop(pid); err != nil {
			t.Fatal(err)
		}
		if stopped, err := allStopped(pid); err != nil || !stopped {
			t.Fatalf("after Stop: stopped %v (%v)", stopped, err)
		}
		if err := Continue(pid); err != nil {
			t.Fatal(err)
		}
	}
}

// TestStopZombie: a process that has exited but whose parent has not
// reaped it (as a PostgreSQL backend that ended while the postmaster was
// being stopped) runs nothing: Stop returns at once, without an error.
func TestStopZombie(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Wait() })
	pid := cmd.Process.Pid
	// Wait for it to exit without reaping it.
	for deadline := time.Now().Add(5 * time.Second); ; {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			t.Fatal(err)
		}
		if i := bytes.LastIndexByte(b, ')'); i > 0 && i+2 < len(b) && b[i+2] == 'Z' {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d did not exit", pid)
		}
		time.Sleep(time.Millisecond)
	}
	start := time.Now()
	if err := Stop(pid); err != nil {
		t.Errorf("Stop of a zombie: %v (after %v)", err, time.Since(start).Round(time.Millisecond))
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("Stop of a zombie took %v", took)
	}
}
