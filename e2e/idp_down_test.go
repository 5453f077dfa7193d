package e2e

import (
	"encoding/base64"
	"net/http"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/authscope/oidctest"
)

// TestWorkloadIssuerDown: a CI job's workload token while its issuer
// cannot be asked. Its key set failing (503) and the issuer unreachable
// from the start are outages, not wrong credentials: the push is answered
// 503 UNAVAILABLE with Retry-After, which clients retry, never 401 (that
// tells the job its token is bad) nor 500. Once the keys are served again
// the same token pushes, without a restart.
func TestWorkloadIssuerDown(t *testing.T) {
	job := map[string]any{"sub": "repo:blumeops/app:ref:refs/heads/main", "repository_owner": "blumeops"}
	start := func(s *server, token string) *http.Response {
		return do(t, http.MethodPost, s.url("/v2/blumeops/job/blobs/uploads/"), nil,
			map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte("ci:"+token))})
	}

	p := oidctest.New(t, "unused")
	s := oidcServer(t, p)
	token := p.Token(workloadAudience, job)
	p.SetKeysDown(true)
	resp := start(s, token)
	wantUnavailable(t, resp, "workload push while the issuer's keys fail")
	p.SetKeysDown(false)
	waitFor(t, 30*time.Second, "the token to push once the keys are back", func() bool {
		return start(s, token).StatusCode == http.StatusAccepted
	})

	down := oidctest.New(t, "unused")
	s2 := oidcServer(t, down)
	token = down.Token(workloadAudience, job)
	down.Close()
	resp = start(s2, token)
	wantUnavailable(t, resp, "workload push while the issuer is unreachable")
	s2.alive("after its issuer went away")
}
