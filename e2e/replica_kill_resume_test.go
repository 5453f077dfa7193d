package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// TestReplicaKillAfterAcknowledgedChunks: a chunked upload on one replica
// whose PATCHes were all answered 202, the replica killed (-9) right
// after the last answer, the client resuming on the other replica as the
// spec tells it to: GET the upload's status, PATCH from the offset it
// reports, PUT. Bytes a 202 acknowledged are there, or the status says
// they are not (an offset below them, which the client sends again); never
// an offset past bytes the session lost, and the committed blob matches
// its digest. Chunks smaller than an S3 part (5 MiB) are the case that
// matters: they wait on the receiving replica's disk for the rest of a
// part.
func TestReplicaKillAfterAcknowledgedChunks(t *testing.T) {
	cases := []struct {
		name   string
		chunks []int
	}{
		{"small chunks", []int{1 << 20, 1 << 20, 700 << 10}},
		{"a part and a small chunk", []int{6 << 20, 1 << 20}},
		{"one byte past a part", []int{5 << 20, 1}},
	}
	c := startCluster(t, 1+len(cases), "", nil)
	b := c.replicas[len(cases)]
	for i, tc := range cases {
		a := c.replicas[i]
		t.Run(tc.name, func(t *testing.T) {
			repo := fmt.Sprintf("drill/resume%d", i)
			total := 0
			for _, n := range tc.chunks {
				total += n
			}
			data := make([]byte, total+3<<20) // the rest, sent on the survivor
			r := rand.New(rand.NewPCG(uint64(i), 7))
			for j := range data {
				data[j] = byte(r.Uint32())
			}
			sum := sha256.Sum256(data)
			digest := "sha256:" + hex.EncodeToString(sum[:])

			resp := do(t, http.MethodPost, a.url("/v2/"+repo+"/blobs/uploads/"), nil, nil)
			if resp.StatusCode != http.StatusAccepted {
				t.Fatalf("POST upload: %s", resp.Status)
			}
			loc := resp.Header.Get("Location")
			acked := 0
			for _, n := range tc.chunks {
				resp = do(t, http.MethodPatch, a.url(uploadPath(t, loc)), data[acked:acked+n],
					map[string]string{"Content-Type": "application/octet-stream", "Content-Range": fmt.Sprintf("%d-%d", acked, acked+n-1)})
				if resp.StatusCode != http.StatusAccepted {
					t.Fatalf("PATCH at %d: %s %s", acked, resp.Status, readAll(t, resp))
				}
				acked += n
				loc = resp.Header.Get("Location")
			}
			a.kill()
			headBlob(t, b, repo, digest, http.StatusNotFound, "on the survivor after the kill")

			path := uploadPath(t, loc)
			start := time.Now()
			var offset int
			for {
				offset = uploadOffset(t, b.url(path))
				if offset > acked {
					t.Fatalf("status says %d bytes, %d were acknowledged", offset, acked)
				}
				resp = do(t, http.MethodPatch, b.url(path), data[offset:],
					map[string]string{"Content-Type": "application/octet-stream", "Content-Range": fmt.Sprintf("%d-%d", offset, len(data)-1)})
				if resp.StatusCode == http.StatusAccepted {
					break
				}
				// The dead replica's lease on the session holds it a while.
				if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable || time.Since(start) > time.Minute {
					t.Fatalf("PATCH from %d on the survivor: %s %s", offset, resp.Status, readAll(t, resp))
				}
				time.Sleep(500 * time.Millisecond)
			}
			t.Logf("acknowledged %d bytes before the kill; the survivor's status said %d; resumed after %v", acked, offset, time.Since(start).Round(100*time.Millisecond))
			if offset < acked {
				t.Errorf("%d acknowledged bytes lost from the session (the status said so, the client sent them again)", acked-offset)
			}
			put := uploadPath(t, resp.Header.Get("Location"))
			sep := "?"
			if strings.Contains(put, "?") {
				sep = "&"
			}
			resp = do(t, http.MethodPut, b.url(put+sep+"digest="+url.QueryEscape(digest)), nil, nil)
			if resp.StatusCode != http.StatusCreated {
				t.Fatalf("PUT commit: %s %s", resp.Status, readAll(t, resp))
			}
			got := do(t, http.MethodGet, b.url("/v2/"+repo+"/blobs/"+digest), nil, nil)
			if body := readAll(t, got); got.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
				t.Fatalf("GET after commit: %s, %d bytes, equal %v", got.Status, len(body), bytes.Equal(body, data))
			}
		})
	}
}
