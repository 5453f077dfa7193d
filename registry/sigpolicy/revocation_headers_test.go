package sigpolicy

import (
	"testing"

	"github.com/caddy-oci/caddy-oci/internal/outbound/outboundtest"
)

// TestRevocationClientHeadersBounded: an OCSP or CRL server (on loopback,
// the only place revocation checks may go) answering with a megabyte of
// headers is refused, not read whole.
func TestRevocationClientHeadersBounded(t *testing.T) {
	resp, err := loopbackClient().Get(outboundtest.FloodServer(t).URL + "/crl")
	if err == nil {
		resp.Body.Close()
		t.Fatalf("a megabyte of headers: %s; want the answer refused", resp.Status)
	}
}
