// Package e2e tests the caddy binary as users run it: built from
// ./cmd/xcaddy-build, serving Caddyfile.example (with its port and storage
// redirected), driven by real clients (crane, skopeo, podman) and killed
// mid-upload.
//
// Tests that need a client binary skip when it is missing, unless
// CADDY_OCI_E2E=1 (as in .ci/run), which makes them mandatory. The
// conformance test runs when OCI_CONFORMANCE_BIN names the suite's binary.
package e2e

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// caddyBin is the binary built by TestMain; empty under -short.
var caddyBin string

// repoRoot is the module root, where Caddyfile.example lives.
const repoRoot = ".."

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "caddy-oci-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	caddyBin = filepath.Join(dir, "caddy")
	build := exec.Command("go", "build", "-o", caddyBin, "./cmd/xcaddy-build")
	build.Dir = repoRoot
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "building caddy: %v\n", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// mandatory reports whether missing client tools fail the tests.
func mandatory() bool { return os.Getenv("CADDY_OCI_E2E") == "1" }

// needBinary skips (or, when mandatory, fails) unless the caddy binary was
// built.
func needBinary(t testing.TB) {
	t.Helper()
	if caddyBin == "" {
		t.Skip("caddy binary not built (-short)")
	}
}

// tool returns the path of a client binary, skipping the test when it is
// missing unless CADDY_OCI_E2E=1.
func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if mandatory() {
			t.Fatalf("%s not found and CADDY_OCI_E2E=1: %v", name, err)
		}
		t.Skipf("%s not installed (set CADDY_OCI_E2E=1 to make this a failure)", name)
	}
	return p
}
