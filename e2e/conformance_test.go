package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestConformance runs the OCI distribution-spec conformance suite against
// the binary serving Caddyfile.example: the acceptance test of the
// registry as shipped (the registry package runs the same suite against the
// bare handler). Build the suite with
//
//	go install github.com/opencontainers/distribution-spec/conformance@v0.0.0-20260831232431-97274622c111
//
// and point OCI_CONFORMANCE_BIN at $(go env GOPATH)/bin/conformance.
func TestConformance(t *testing.T) {
	bin := conformanceBin(t)
	s := sparseServer(t)
	runConformance(t, bin, s.addr, "conformance-e2e.txt")
}

// conformanceBin is the suite's binary, or a skip.
func conformanceBin(t *testing.T) string {
	bin := os.Getenv("OCI_CONFORMANCE_BIN")
	if bin == "" {
		t.Skip("OCI_CONFORMANCE_BIN not set")
	}
	return bin
}

// sparseServer is the binary on the example config plus
// sparse_manifests, for the suite's sparse data (OCI_DATA_SPARSE): image
// manifests pushed without a layer.
func sparseServer(t *testing.T) *server {
	t.Helper()
	needBinary(t)
	dataDir := t.TempDir()
	config, addr, admin := exampleConfig(t, dataDir)
	b, err := os.ReadFile(config)
	if err != nil {
		t.Fatal(err)
	}
	storage := "storage " + strconv.Quote(dataDir)
	if err := os.WriteFile(config, []byte(strings.Replace(string(b), storage, storage+"\n\t\tsparse_manifests", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, config: config, addr: addr, admin: admin, dataDir: dataDir}
	s.start()
	return s
}

// runConformance runs the whole suite (every optional part on, unless
// env, NAME=value settings of the suite, turns one off) against the
// registry at addr and requires every test to pass. The report goes to
// CADDY_OCI_REPORT_DIR/<report> when that is set.
func runConformance(t *testing.T, bin, addr, report string, env ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(),
		"OCI_REGISTRY="+addr,
		"OCI_TLS=disabled",
		"OCI_VERSION=dev",
		"OCI_API_BLOBS_DIGEST_HEADER=true",
		"OCI_API_MANIFESTS_DIGEST_HEADER=true",
		"OCI_API_MANIFESTS_TAG_PARAM=true",
		"OCI_API_BLOBS_UPLOAD_CANCEL=true",
		"OCI_API_BLOBS_MOUNT_ANONYMOUS=true",
		"OCI_API_REFERRER=true",
		"OCI_DATA_SHA512=true",
		"OCI_DATA_SPARSE=true",
		"OCI_RESULTS_DIR="+t.TempDir(),
	)
	cmd.Env = append(cmd.Env, env...) // the last of a name wins
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	runErr := cmd.Run()
	text := out.String()

	summary := regexp.MustCompile(`(?s)OCI Conformance Result:.*?Total\.*:\s+\d+`).FindString(text)
	if summary == "" {
		t.Fatalf("no result summary from the suite (%v):\n%s", runErr, text)
	}
	t.Logf("conformance against %s:\n%s", addr, summary)
	// .ci/run prints the summary from here (go test shows logs of passing
	// tests only with -v).
	if dir := os.Getenv("CADDY_OCI_REPORT_DIR"); dir != "" {
		if err := os.WriteFile(filepath.Join(dir, report), []byte(text), 0o644); err != nil {
			t.Error(err)
		}
	}
	if runErr != nil {
		t.Fatalf("conformance suite failed: %v\n%s", runErr, text)
	}
	if !regexp.MustCompile(`OCI Conformance Result: (?i:pass)`).MatchString(summary) {
		t.Errorf("conformance result is not a pass:\n%s", text)
	}
	// Every test must pass: nothing failed, errored or was skipped for
	// lack of support.
	for _, status := range []string{"FAIL", "Error", "Skip"} {
		re := regexp.MustCompile(`(?m)^\s*` + status + `\.*:\s+(\d+)`)
		if m := re.FindStringSubmatch(summary); m != nil && m[1] != "0" {
			t.Errorf("conformance: %s %s\n%s", m[1], status, text)
		}
	}
}
