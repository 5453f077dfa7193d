package s3

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestObjectStoreHeadersBounded: an object store answering with a
// megabyte of headers is refused as a broken one, not read whole (Go's
// default bound is 10 MiB, counted by no budget of ours).
func TestObjectStoreHeadersBounded(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for i := range 1024 {
			w.Header().Set(fmt.Sprintf("X-Amz-Meta-Pad-%d", i), strings.Repeat("p", 1024))
		}
	}))
	t.Cleanup(srv.Close)
	req, _ := http.NewRequest(http.MethodHead, srv.URL+"/bucket/key", nil)
	resp, err := newHTTPClient().Do(req)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("a megabyte of headers: %s; want the answer refused", resp.Status)
	}
}
