package main

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// run feeds the report a real `go test -json` run of testdata/sample.
func run(t *testing.T, fail bool) (string, *report) {
	t.Helper()
	cmd := exec.Command("go", "test", "-count=1", "-json", "./testdata/sample")
	cmd.Env = append(os.Environ(), "SAMPLE_FAIL=0")
	if fail {
		cmd.Env = append(cmd.Env, "SAMPLE_FAIL=1")
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	r := newReport(&out)
	r.module = "github.com/caddy-oci/caddy-oci/internal/testreport"
	if err := r.read(stdout); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait() // fails with the sample's failure
	r.summary()
	return out.String(), r
}

func TestReportListsSkipsWithReasons(t *testing.T) {
	out, r := run(t, false)
	if r.failed || r.finished != 1 {
		t.Errorf("failed %v, packages %d; want a pass of one package\n%s", r.failed, r.finished, out)
	}
	for _, want := range []string{
		"ok  \tgithub.com/caddy-oci/caddy-oci/internal/testreport/testdata/sample\t",
		"skipped 3 tests; they did not run:",
		"  OCI_CONFORMANCE_BIN not set (2):\n    testdata/sample TestNeedsSuite\n    testdata/sample TestSub/a\n",
		"  crane not installed (set CADDY_OCI_E2E=1 to make this a failure) (1):\n    testdata/sample TestNeedsCrane\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "noise of a passing test") {
		t.Errorf("report shows a passing test's log:\n%s", out)
	}
	if !strings.HasSuffix(out, "testdata/sample TestNeedsCrane\n") {
		t.Errorf("the skips are not at the end:\n%s", out)
	}
}

func TestReportShowsFailures(t *testing.T) {
	out, r := run(t, true)
	if !r.failed {
		t.Errorf("a failing run reported as passing:\n%s", out)
	}
	for _, want := range []string{"sample_test.go:23: the sample failure", "--- FAIL: TestFails", "FAIL\tgithub.com/caddy-oci/caddy-oci/internal/testreport/testdata/sample\t", "skipped 3 tests"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	// The end of the report says why, though the message scrolled out
	// of the lines kept of the test's output.
	_, tail, _ := strings.Cut(out, "failed 1 tests; their messages:\n")
	if !strings.HasPrefix(tail, "  testdata/sample TestFails\n") || !strings.Contains(tail, "sample_test.go:23: the sample failure") || !strings.Contains(tail, "log line 499\n") || strings.Contains(tail, "fourth line") || !strings.Contains(tail, "... ") {
		t.Errorf("the closing list of failures is not the test's messages:\n%s", tail)
	}
	if strings.Count(out, "FAIL\tgithub.com") != 1 {
		t.Errorf("the package's FAIL line is not there once:\n%s", out)
	}
}

func TestSkipReason(t *testing.T) {
	for _, tc := range []struct {
		lines []string
		want  string
	}{
		{[]string{"=== RUN   TestX\n", "    main_test.go:71: crane not installed\n", "--- SKIP: TestX (0.00s)\n"}, "crane not installed"},
		{[]string{"=== RUN   TestX\n", "--- SKIP: TestX (0.00s)\n"}, "(no reason given)"},
	} {
		if got := skipReason(tc.lines); got != tc.want {
			t.Errorf("skipReason(%q) = %q, want %q", tc.lines, got, tc.want)
		}
	}
}
