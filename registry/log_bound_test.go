package registry

import (
	"net/http"
	"strings"
	"testing"
)

// TestErrorLogBounded: what an anonymous request puts in a log line is
// bounded, whatever the length of its path and query. On the built binary
// a GET of a 6,709-byte repository name wrote a 20,374-byte line (the
// name as repo, in the reason and in the URI), and a 16 KB query a 16 KB
// line: three times what the caller sent, into the log disk.
func TestErrorLogBounded(t *testing.T) {
	srv, audit, logs := publicReadRegistry(t)

	long := strings.Repeat(strings.Repeat("a", 60)+"/", 110)
	query := "?q=" + strings.Repeat("b", 12000)
	for _, path := range []string{
		"/v2/" + long + "x/manifests/v1",      // invalid name: refused before auth
		"/v2/public/app/manifests/v1" + query, // anonymous read: 404
		"/v2/private/" + strings.Repeat("c", 200) + "/manifests/" + strings.Repeat("t", 128) + query, // denied: audited
		"/v2/public/app/manifests/" + strings.Repeat("t", 5000),                                      // invalid reference
	} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode < 400 {
			t.Fatalf("GET %.60s...: %d, want a refusal", path, resp.StatusCode)
		}
	}
	lines := append(logs.All(), audit.All()...)
	if len(lines) < 4 {
		t.Fatalf("%d log lines, want one per refusal at least", len(lines))
	}
	for _, l := range lines {
		n := len(l.Message)
		for k, v := range l.ContextMap() {
			switch v := v.(type) {
			case string:
				n += len(k) + len(v)
			case []any:
				for _, s := range v {
					n += len(s.(string))
				}
			}
		}
		if n > 5000 {
			t.Errorf("log line %q of %d bytes for one anonymous request, want at most 5000", l.Message, n)
		}
	}
}
