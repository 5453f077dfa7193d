package s3

import (
	"net/http"
	"testing"

	"github.com/caddy-oci/caddy-oci/internal/outbound/outboundtest"
)

// TestObjectStoreHeadersBounded: an object store answering with a
// megabyte of headers is refused as a broken one, not read whole (Go's
// default bound is 10 MiB, counted by no budget of ours).
func TestObjectStoreHeadersBounded(t *testing.T) {
	req, _ := http.NewRequest(http.MethodHead, outboundtest.FloodServer(t).URL+"/bucket/key", nil)
	resp, err := newHTTPClient().Do(req)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("a megabyte of headers: %s; want the answer refused", resp.Status)
	}
}
