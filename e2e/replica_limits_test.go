package e2e

import (
	"bytes"
	"encoding/json"
	"net/http"
	"testing"
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
