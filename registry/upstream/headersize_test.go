package upstream

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// padHeaders sets n bytes' worth of headers on h, in lines of 8 KiB.
func padHeaders(h http.Header, n int) {
	line := strings.Repeat("a", 8<<10)
	for i := 0; i*len(line) < n; i++ {
		h.Set(fmt.Sprintf("X-Pad-%d", i), line)
	}
}

// TestResponseHeadersBounded: the headers of every answer the mirror reads
// from another server (upstream's own, a blob's storage after a redirect,
// a token service's) are bounded by MaxResponseHeaderBytes, far below Go's
// default of 10 MiB. Each answer's headers are held whole while its body
// is read, outside the budget of manifest bodies: with the default, one
// hostile upstream answering a few hundred anonymous pulls of made-up
// digests with 9 MiB of headers took a caddy from 60 MiB to 920 MiB
// (100 pulls). Headers of the size registries send pass.
//
// Before the bound, the three oversized answers were read (Do returned
// the 200 and the token).
func TestResponseHeadersBounded(t *testing.T) {
	const tooLarge = 2 << 20
	blob := "blobs/sha256:" + strings.Repeat("b", 64)
	padded := func(n int) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			padHeaders(w.Header(), n)
			_, _ = w.Write([]byte("{}"))
		}
	}
	t.Run("usual headers pass", func(t *testing.T) {
		s := httptest.NewServer(padded(16 << 10))
		defer s.Close()
		doOK(t, newClient(t, Config{URLs: []string{s.URL}, Attempts: 1}))
	})
	t.Run("upstream's answer", func(t *testing.T) {
		s := httptest.NewServer(padded(tooLarge))
		defer s.Close()
		c := newClient(t, Config{URLs: []string{s.URL}, Attempts: 1})
		resp, err := c.Do(context.Background(), http.MethodGet, testRepo, testPath, nil)
		if err == nil {
			resp.Body.Close()
			t.Fatalf("an answer with %d bytes of headers was read: %d", tooLarge, resp.StatusCode)
		}
	})
	t.Run("storage after a blob redirect", func(t *testing.T) {
		storage := httptest.NewServer(padded(tooLarge))
		defer storage.Close()
		reg := newRedirectingRegistry(t, false, func(*http.Request) string { return storage.URL + "/blob" })
		c := newClient(t, Config{URLs: []string{reg.URL}, Attempts: 1, Username: "bob", Password: "pw"})
		resp, err := c.Do(context.Background(), http.MethodGet, testRepo, blob, nil)
		if err == nil {
			resp.Body.Close()
			t.Fatalf("a storage answer with %d bytes of headers was read: %d", tooLarge, resp.StatusCode)
		}
	})
	t.Run("token service", func(t *testing.T) {
		tokens := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			padHeaders(w.Header(), tooLarge)
			w.Header().Set("Content-Type", "application/json")
			_, _ = fmt.Fprintf(w, `{"token":%q,"expires_in":300}`, testToken)
		}))
		defer tokens.Close()
		var hits atomic.Int32
		reg := newBearerRegistry(t, tokens.URL, &hits)
		c := newClient(t, Config{URLs: []string{reg.URL}, Attempts: 1})
		resp, err := c.Do(context.Background(), http.MethodGet, testRepo, testPath, nil)
		if err == nil {
			resp.Body.Close()
			t.Fatalf("a token answer with %d bytes of headers was read: %d", tooLarge, resp.StatusCode)
		}
	})
}
