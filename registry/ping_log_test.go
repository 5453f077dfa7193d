package registry

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/cache"
)

// Under partial anonymous access every client's first request, an
// anonymous GET /v2/, is answered with a challenge. That is the login
// handshake: one debug line, no audit denial, nothing at info or above.
// A real refusal is still audited.
func TestAnonymousPingLoggedOnceAtDebug(t *testing.T) {
	srv, audit, logs := publicReadRegistry(t)

	resp, err := http.Get(srv.URL + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
		t.Fatalf("anonymous /v2/: %d %q, want 401 with a challenge", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	if n := audit.Len(); n != 0 {
		t.Errorf("audit log has %d lines for the ping: %v", n, audit.All())
	}
	if all := logs.All(); len(all) != 1 || all[0].Level != zapcore.DebugLevel {
		t.Errorf("handler logged %v; want one debug line", all)
	}

	resp, err = http.Get(srv.URL + "/v2/private/app/manifests/v1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("anonymous pull of private/app: %d, want 401", resp.StatusCode)
	}
	if n := audit.FilterMessage("denied").Len(); n != 1 {
		t.Errorf("a refused pull made %d audit denials, want 1", n)
	}
}

// publicReadRegistry is a registry on a real store whose access rules let
// anonymous callers read public/** only, with its log and its audit log
// observed.
func publicReadRegistry(t *testing.T) (srv *httptest.Server, audit, logs *observer.ObservedLogs) {
	t.Helper()
	store, err := cache.Open(cache.Options{Dir: t.TempDir(), Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	auditCore, audit := observer.New(zapcore.DebugLevel)
	logCore, logs := observer.New(zapcore.DebugLevel)
	pol, err := authscope.NewPolicy(authscope.PolicyConfig{Repositories: map[string]authscope.RepositoryPolicy{
		"public/**": {Anonymous: []string{authscope.ActionRead}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	a, err := authscope.NewAuthorizer(authscope.Options{Policy: pol, Audit: zap.New(auditCore)})
	if err != nil {
		t.Fatal(err)
	}
	srv = httptest.NewServer(New(Config{Store: store, Logger: zap.New(logCore), Authorizer: a, CanRead: a.CanRead}))
	t.Cleanup(srv.Close)
	return srv, audit, logs
}
