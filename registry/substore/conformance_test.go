package substore_test

import (
	"bytes"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"testing"
)

// TestConformanceWithSubPaths runs the OCI distribution-spec conformance
// suite (see registry.TestConformance for how to build it) against a
// registry whose repositories live in sub-path stores: both of the
// suite's repositories in one sub store, then its first in a sub store
// and its second in the main one, so that its cross-repository mounts
// cross stores too. Across stores an anonymous mount (no `from`) finds
// no candidate in the target's store and is answered as an upload, which
// the suite counts as skipped: that, and only that, is allowed there.
func TestConformanceWithSubPaths(t *testing.T) {
	bin := os.Getenv("OCI_CONFORMANCE_BIN")
	if bin == "" {
		t.Skip("OCI_CONFORMANCE_BIN not set")
	}
	for _, tc := range []struct {
		prefixes []string
		split    bool
	}{{[]string{"conformance"}, false}, {[]string{"conformance/repo1", "other"}, true}} {
		prefixes := tc.prefixes
		t.Run(prefixes[0], func(t *testing.T) {
			rg := newRig(t, prefixes...)
			u, err := url.Parse(rg.srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(bin)
			cmd.Dir = t.TempDir()
			cmd.Env = append(os.Environ(),
				"OCI_REGISTRY="+u.Host,
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
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			runErr := cmd.Run()
			report := out.String()
			if m := regexp.MustCompile(`(?s)OCI Conformance Result:.*?Total\.*:\s+\d+`).FindString(report); m != "" {
				t.Log(m)
			}
			if runErr != nil {
				t.Fatalf("conformance suite failed: %v\n%s", runErr, report)
			}
			statuses := []string{"FAIL", "Error", "Skip"}
			if tc.split {
				statuses = statuses[:2]
				skipped := regexp.MustCompile(`(?m)^\s+(\S[^.\n]*?)\.+:\s+Skip$`).FindAllStringSubmatch(report, -1)
				for _, m := range skipped {
					if m[1] != "Blob anonymous mount" {
						t.Errorf("conformance: %s skipped\n%s", m[1], report)
					}
				}
			}
			for _, status := range statuses {
				re := regexp.MustCompile(`(?m)^\s*` + status + `\.*:\s+(\d+)`)
				if m := re.FindStringSubmatch(report); m != nil && m[1] != "0" {
					t.Errorf("conformance: %s %s\n%s", m[1], status, report)
				}
			}
		})
	}
}
