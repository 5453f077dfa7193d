package sigpolicy

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestRevocationClientHeadersBounded: an OCSP or CRL server (on loopback,
// the only place revocation checks may go) answering with a megabyte of
// headers is refused, not read whole.
func TestRevocationClientHeadersBounded(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for i := range 1024 {
			w.Header().Set(fmt.Sprintf("X-Pad-%d", i), strings.Repeat("p", 1024))
		}
	}))
	t.Cleanup(srv.Close)
	resp, err := loopbackClient().Get(srv.URL + "/crl")
	if err == nil {
		resp.Body.Close()
		t.Fatalf("a megabyte of headers: %s; want the answer refused", resp.Status)
	}
}
