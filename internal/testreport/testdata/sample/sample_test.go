package sample

import (
	"os"
	"testing"
)

func TestPasses(t *testing.T) { t.Log("noise of a passing test") }

func TestNeedsCrane(t *testing.T) {
	t.Skipf("%s not installed (set CADDY_OCI_E2E=1 to make this a failure)", "crane")
}

func TestNeedsSuite(t *testing.T) { t.Skip("OCI_CONFORMANCE_BIN not set") }

func TestSub(t *testing.T) {
	t.Run("a", func(t *testing.T) { t.Skip("OCI_CONFORMANCE_BIN not set") })
	t.Run("b", func(t *testing.T) {})
}

func TestFails(t *testing.T) {
	if os.Getenv("SAMPLE_FAIL") == "1" {
		t.Error("the sample failure")
		// A long log after the failure (a server's log at cleanup)
		// pushes the message out of the lines kept per test.
		for i := range 500 {
			t.Logf("log line %d\nsecond line\nthird line\nfourth line", i)
		}
	}
}
