package outbound

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/internal/outbound/outboundtest"
)

func TestClientRefusesHeadersPastTheBound(t *testing.T) {
	for _, tc := range []struct {
		headers int // of 1 KiB each
		ok      bool
	}{{headers: 16, ok: true}, {headers: 1024, ok: false}} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			outboundtest.PadHeaders(w.Header(), tc.headers)
		}))
		resp, err := Client(5 * time.Second).Get(srv.URL)
		if err == nil {
			resp.Body.Close()
		}
		srv.Close()
		if (err == nil) != tc.ok {
			t.Errorf("%d KiB of headers: error %v; want refused: %v", tc.headers, err, !tc.ok)
		}
	}
}

func TestLimitBodies(t *testing.T) {
	for _, tc := range []struct {
		size int
		ok   bool
	}{{size: 0, ok: true}, {size: 1000, ok: true}, {size: 1024, ok: true}, {size: 1025, ok: false}, {size: 1 << 20, ok: false}} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = w.Write([]byte(strings.Repeat("b", tc.size)))
		}))
		c := &http.Client{Transport: LimitBodies(Transport(), 1024)}
		resp, err := c.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		srv.Close()
		if tc.ok && (err != nil || len(body) != tc.size) {
			t.Errorf("%d bytes under a bound of 1024: read %d, %v; want all of it", tc.size, len(body), err)
		}
		if !tc.ok && (!errors.Is(err, ErrBodyTooLarge) || len(body) > 1024) {
			t.Errorf("%d bytes under a bound of 1024: read %d, %v; want ErrBodyTooLarge within the bound", tc.size, len(body), err)
		}
	}
}

// TestLimitBodiesErrorSticks: once a body has gone past the bound, every
// later read says so. A reader that reads again after an error (bufio
// hands an error out once and then asks again) must not see io.EOF, as
// if the body had ended at the bound.
func TestLimitBodiesErrorSticks(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(strings.Repeat("b", 1025)))
	}))
	defer srv.Close()
	c := &http.Client{Transport: LimitBodies(Transport(), 1024)}
	resp, err := c.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.ReadAll(resp.Body); !errors.Is(err, ErrBodyTooLarge) {
		t.Fatalf("first read past the bound: %v; want ErrBodyTooLarge", err)
	}
	for i := range 2 {
		if n, err := resp.Body.Read(make([]byte, 16)); n != 0 || !errors.Is(err, ErrBodyTooLarge) {
			t.Fatalf("read %d after the bound was passed: %d bytes, %v; want ErrBodyTooLarge", i+2, n, err)
		}
	}
}
