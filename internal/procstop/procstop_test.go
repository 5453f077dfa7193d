//go:build linux

package procstop

import (
	"os/exec"
	"testing"
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
