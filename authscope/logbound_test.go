package authscope

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestTokenProxyRefusalLogBounded: a refused token request's log line is
// bounded. Each query parameter the proxy does not log is written as
// "xxxxx": a query of 8,000 bare "a&" parameters (16 KB) made a 64 KB
// line, four times what an anonymous caller sent.
func TestTokenProxyRefusalLogBounded(t *testing.T) {
	is := newTestIssuer(t, map[string]string{"ci": "ci-pw"}, dockerAuthACL)
	up := is.Start(t)
	u, _ := url.Parse(up.URL + "/auth")
	core, logs := observer.New(zapcore.DebugLevel)
	srv := httptest.NewServer(&TokenProxy{Upstream: u, Names: testNames(t), Logger: zap.New(core)})
	t.Cleanup(srv.Close)
	q := "scope=repository:../" + strings.Repeat("x", 4000) + ":pull&" + strings.Repeat("a&", 6000)
	resp, err := http.Get(srv.URL + TokenPath + "?" + q)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("status %d, want 400", resp.StatusCode)
	}
	all := logs.All()
	if len(all) == 0 {
		t.Fatal("refusal not logged")
	}
	for _, l := range all {
		n := 0
		for k, v := range l.ContextMap() {
			if s, ok := v.(string); ok {
				n += len(k) + len(s)
			}
		}
		if n > 5000 {
			t.Errorf("log line %q of %d bytes for a %d-byte query, want at most 5000", l.Message, n, len(q))
		}
	}
}
