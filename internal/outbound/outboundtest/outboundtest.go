// Package outboundtest has servers for the tests of outbound's bounds: a
// server the operator named that answers with far more than a real one.
package outboundtest

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// PadHeaders adds kib headers of 1 KiB each to h. A megabyte (1024) is
// within Go's default bound of 10 MiB for a client, and far past what a
// real server sends.
func PadHeaders(h http.Header, kib int) {
	for i := range kib {
		h.Set(fmt.Sprintf("X-Pad-%d", i), strings.Repeat("p", 1024))
	}
}

// FloodServer answers every request with a megabyte of headers and an
// empty 200; it is closed when t ends.
func FloodServer(t testing.TB) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		PadHeaders(w.Header(), 1024)
	}))
	t.Cleanup(srv.Close)
	return srv
}
