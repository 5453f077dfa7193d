package caddymodule

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// TestFrontClientBodyError: a request body the client spoiled (a chunked
// body that does not parse) is the client's mistake, answered 400 by
// oci_front, as oci_registry answers it, and by oci_registry for a
// request it passes on to reverse_proxy. Before, reverse_proxy's failure
// to read it reached the client as 502 Bad Gateway (measured against the
// built binary), a server fault a client retries and an operator is paged
// for.
func TestFrontClientBodyError(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(backend.Close)
	addr, reg := freeAddr(t), freeAddr(t)
	cfg := adaptFront(t, `{
	admin off
	log {
		level ERROR
	}
}
http://`+addr+` {
	oci_front {
		mirror docker.io {
			default
		}
	}
	reverse_proxy `+backend.URL+`
}
http://`+reg+` {
	oci_registry {
		storage `+t.TempDir()+`
	}
	reverse_proxy `+backend.URL+`
}`)
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopCaddy(t) })
	for name, req := range map[string]string{
		"front: chunk size not hex":  "POST /v2/team/app/blobs/uploads/ HTTP/1.1\r\nHost: " + addr + "\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nx\r\n0\r\n\r\n",
		"front: chunk ext with CRLF": "PATCH /v2/team/app/blobs/uploads/u1 HTTP/1.1\r\nHost: " + addr + "\r\nTransfer-Encoding: chunked\r\n\r\n1;a=\"\r\n\"\r\nx\r\n0\r\n\r\n",
		"beside the registry":        "POST /app/form HTTP/1.1\r\nHost: " + reg + "\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nx\r\n0\r\n\r\n",
	} {
		to, _, _ := strings.Cut(strings.SplitN(req, "Host: ", 2)[1], "\r\n")
		c, err := net.Dial("tcp", to)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		resp.Body.Close()
		c.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", name, resp.StatusCode)
		}
	}
}
