package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// TestReplicaUploadBytes: max_upload_bytes_per_client holds across
// replicas: while a client's session on one replica holds its share,
// another replica refuses it a new session with the single-node answer
// (429 TOOMANYREQUESTS, Retry-After), and a cancel through that replica
// gives the share back.
func TestReplicaUploadBytes(t *testing.T) {
	c := startCluster(t, 2, "\t\tmax_upload_bytes 4MiB\n\t\tmax_upload_bytes_per_client 2MiB", nil)
	a, b := c.replicas[0], c.replicas[1]
	const repo = "limits/app"

	resp := do(t, http.MethodPost, a.url("/v2/"+repo+"/blobs/uploads/"), nil, nil)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST upload on a: %s", resp.Status)
	}
	loc := uploadPath(t, resp.Header.Get("Location"))
	resp = do(t, http.MethodPatch, a.url(loc), bytes.Repeat([]byte("a"), 2<<20),
		map[string]string{"Content-Type": "application/octet-stream"})
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("PATCH of the whole share on a: %s %s", resp.Status, readAll(t, resp))
	}

	resp = do(t, http.MethodPost, b.url("/v2/"+repo+"/blobs/uploads/"), nil, nil)
	body := readAll(t, resp)
	var envelope struct {
		Errors []struct{ Code string } `json:"errors"`
	}
	_ = json.Unmarshal(body, &envelope)
	if resp.StatusCode != http.StatusTooManyRequests || len(envelope.Errors) != 1 ||
		envelope.Errors[0].Code != "TOOMANYREQUESTS" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("POST on b while a holds the client's share: %s %s, want 429 TOOMANYREQUESTS with Retry-After", resp.Status, body)
	}

	if resp := do(t, http.MethodDelete, b.url(loc), nil, nil); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE through b: %s", resp.Status)
	}
	if resp := do(t, http.MethodPost, b.url("/v2/"+repo+"/blobs/uploads/"), nil, nil); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST on b after the cancel: %s", resp.Status)
	}
}

// TestReplicaLoginLimit: login_limit bounds a client's failed logins
// across the replicas, not on each: guesses spread over two replicas use
// up one per_client bound, and both then answer 429 TOOMANYREQUESTS
// without looking at the password. A good login is refused too (the
// bound is the address's), and a user who logged in from the address
// before the guessing still gets in on either replica (as on one node).
func TestReplicaLoginLimit(t *testing.T) {
	htpasswd := writeHtpasswd(t, map[string]string{"alice": "alice-pw", "bob": "bob-pw"})
	needBinary(t)
	srv, pg := s3test.Start(t), pgtest.Start(t)
	bucket := replicaEnv(t, srv, pg)
	auth := fmt.Sprintf(`		auth {
			htpasswd %s
			fail_delay 10ms
			login_limit {
				per_client 4
			}
			access ** {
				default read
			}
		}`, htpasswd)
	// Auth on: /v2/ answers 401 to the readiness probe.
	a := siteServer(t, "", replicaSite(srv, bucket, auth, ""), http.StatusUnauthorized)
	b := siteServer(t, "", replicaSite(srv, bucket, auth, ""), http.StatusUnauthorized)
	replicas := []*server{a, b}
	login := func(r *server, user, pw string) *http.Response {
		return do(t, http.MethodGet, r.url("/v2/"), nil, map[string]string{
			"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pw))})
	}
	if resp := login(a, "bob", "bob-pw"); resp.StatusCode != http.StatusOK {
		t.Fatalf("bob's login before the guessing: %s", resp.Status)
	}
	for i := range 4 {
		r := replicas[i%2]
		if resp := login(r, "alice", fmt.Sprintf("guess-%d", i)); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("guess %d on replica %d: %s, want 401", i+1, i%2, resp.Status)
		}
	}
	// Replica b learns of bob's login on a within seconds.
	waitFor(t, 10*time.Second, "bob, who logged in from this address on replica a, to be let in on replica b", func() bool {
		return login(b, "bob", "bob-pw").StatusCode == http.StatusOK
	})
	for i, r := range replicas {
		resp := login(r, "alice", "alice-pw")
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
			t.Errorf("replica %d after four guesses spread over two: %s %s, want 429 with Retry-After", i, resp.Status, readAll(t, resp))
		}
	}
}
