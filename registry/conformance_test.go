package registry

import (
	"bytes"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"testing"
)

// TestConformance runs the OCI distribution-spec conformance suite against
// the handler. Build the suite with
//
//	go install github.com/opencontainers/distribution-spec/conformance@v0.0.0-20260831232431-97274622c111
//
// and point OCI_CONFORMANCE_BIN at $(go env GOPATH)/bin/conformance.
func TestConformance(t *testing.T) {
	bin := os.Getenv("OCI_CONFORMANCE_BIN")
	if bin == "" {
		t.Skip("OCI_CONFORMANCE_BIN not set")
	}
	// Sparse manifests on, for the suite's sparse data (OCI_DATA_SPARSE).
	tr := newTestRegistry(t, func(c *Config) { c.SparseManifests = true })
	u, err := url.Parse(tr.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	results := t.TempDir()
	cmd := exec.Command(bin)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(),
		"OCI_REGISTRY="+u.Host,
		"OCI_TLS=disabled",
		// "dev" is the current spec with every optional API of the
		// development version switched on.
		"OCI_VERSION=dev",
		"OCI_API_BLOBS_DIGEST_HEADER=true",
		"OCI_API_MANIFESTS_DIGEST_HEADER=true",
		"OCI_API_MANIFESTS_TAG_PARAM=true",
		"OCI_API_BLOBS_UPLOAD_CANCEL=true",
		"OCI_API_BLOBS_MOUNT_ANONYMOUS=true",
		"OCI_API_REFERRER=true",
		"OCI_DATA_SHA512=true",
		"OCI_DATA_SPARSE=true",
		"OCI_RESULTS_DIR="+results,
	)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	runErr := cmd.Run()
	report := out.String()
	if m := regexp.MustCompile(`(?s)OCI Conformance Result:.*?Total\.*:\s+\d+`).FindString(report); m != "" {
		t.Log(m)
	}
	if runErr != nil {
		t.Fatalf("conformance suite failed: %v\n%s", runErr, report)
	}
	// The suite exits 0 when nothing failed; insist that nothing was
	// skipped for lack of support either.
	for _, status := range []string{"FAIL", "Error", "Skip"} {
		re := regexp.MustCompile(`(?m)^\s*` + status + `\.*:\s+(\d+)`)
		if m := re.FindStringSubmatch(report); m != nil && m[1] != "0" {
			t.Errorf("conformance: %s %s\n%s", m[1], status, report)
		}
	}
}
