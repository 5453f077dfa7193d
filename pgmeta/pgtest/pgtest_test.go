package pgtest

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestMissingPostgres: without PostgreSQL a test skips, saying why, and
// under CADDY_OCI_E2E=1 it fails instead. Each case runs this binary
// again with a folder that has no PostgreSQL in it.
func TestMissingPostgres(t *testing.T) {
	if os.Getenv("PGTEST_CHILD") == "1" {
		Start(t)
		t.Fatal("Start returned without PostgreSQL")
	}
	for _, c := range []struct {
		e2e, want string
		fails     bool
	}{
		{"", "--- SKIP", false},
		{"1", "--- FAIL", true},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestMissingPostgres$", "-test.v")
		cmd.Env = append(os.Environ(), "PGTEST_CHILD=1", BinEnv+"="+t.TempDir(), "CADDY_OCI_E2E="+c.e2e)
		out, err := cmd.CombinedOutput()
		if (err != nil) != c.fails || !strings.Contains(string(out), c.want) || !strings.Contains(string(out), "PostgreSQL is not installed") {
			t.Errorf("CADDY_OCI_E2E=%q: %v\n%s", c.e2e, err, out)
		}
	}
}

// TestServer: a server starts, takes databases apart, stops and starts
// again on its port.
func TestServer(t *testing.T) {
	s := Start(t)
	a, b := s.NewDatabase(t), s.NewDatabase(t)
	if a == b {
		t.Fatalf("two tests got one database: %s", a)
	}
	if err := s.exec("SELECT 1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := s.exec("SELECT 1"); err == nil {
		t.Fatal("stopped server answered")
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if err := s.exec("SELECT 1"); err != nil {
		t.Fatalf("after a restart: %v", err)
	}
}
