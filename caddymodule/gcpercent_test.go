package caddymodule

import (
	"os"
	"os/exec"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/zap"
)

// TestDefaultGCPercent runs setDefaultGCPercent in a process of its own
// (it is once per process and the setting is the process's) with and
// without GOGC: the default applies only when the operator set none.
func TestDefaultGCPercent(t *testing.T) {
	if os.Getenv("GCPERCENT_CHILD") == "1" {
		setDefaultGCPercent(zap.NewNop())
		os.Stdout.WriteString("gogc=" + strconv.Itoa(debug.SetGCPercent(100)) + "\n")
		return
	}
	for _, c := range []struct {
		env  []string
		want string
	}{
		{nil, "gogc=50"},
		{[]string{"GOGC=100"}, "gogc=100"},
		{[]string{"GOGC=off"}, "gogc=-1"},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestDefaultGCPercent$", "-test.count=1")
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "GOGC=") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		cmd.Env = append(append(cmd.Env, "GCPERCENT_CHILD=1"), c.env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", c.env, err, out)
		}
		if !strings.Contains(string(out), c.want+"\n") {
			t.Errorf("env %v: got %q, want %s", c.env, out, c.want)
		}
	}
}
