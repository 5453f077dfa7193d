package caddymodule

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/authscope/oidctest"
	"github.com/caddyserver/caddy/v2"
)

// A refusal sent without reading the request's body closes the
// connection: otherwise net/http waits for up to 256 KiB of a body the
// client withholds before answering. Each request announces 4096 bytes
// and sends none; the refusal must come at once.
func TestRefusalsDoNotWaitForWithheldBody(t *testing.T) {
	p := oidctest.New(t, "alice")
	dir := t.TempDir()
	secret := filepath.Join(dir, "client-secret")
	if err := os.WriteFile(secret, []byte(oidctest.ClientSecret), 0o600); err != nil {
		t.Fatal(err)
	}
	key := authscope.APIKeyPrefix + "0123456789abcdef_" + strings.Repeat("K", 43)
	type refusal struct {
		method, path, headers string
		status                int
	}
	for name, tc := range map[string]struct {
		handler  func(addr string) string
		refusals []refusal
	}{
		"oci_front": {
			handler: func(string) string {
				return `oci_front {
			mirror docker.io
			token {
				realm http://127.0.0.1:1/auth
				service registry.test
				proxy
			}
		}`
			},
			refusals: []refusal{
				{"POST", "/_oci/token", "Content-Type: text/plain\r\n", http.StatusUnsupportedMediaType},
				{"PUT", "/_oci/token", "", http.StatusMethodNotAllowed},
				{"PUT", "/v2/app/manifests/v1", "Authorization: Bearer a\r\nAuthorization: Bearer b\r\n", http.StatusBadRequest},
				{"PUT", "/v2/app/manifests/v1", "Authorization: Bearer " + key + "\r\n", http.StatusUnauthorized},
			},
		},
		"oci_registry": {
			handler: func(addr string) string {
				return `oci_registry {
			storage ` + filepath.Join(dir, "store") + `
			auth {
				access ** {
					anonymous read
				}
				oidc {
					issuer ` + p.Issuer() + `
					client_id ` + oidctest.ClientID + `
					client_secret_file ` + secret + `
					external_url http://` + addr + `
				}
			}
		}`
			},
			refusals: []refusal{
				{"POST", "/_oci/auth/apikeys", "Content-Type: application/json\r\n", http.StatusUnauthorized},
				{"PUT", "/_oci/auth/session", "", http.StatusMethodNotAllowed},
				{"POST", "/_oci/auth/nothing", "", http.StatusNotFound},
				{"POST", "/_oci/sync", "", http.StatusNotFound},
				{"PUT", "/v2/app/nothing", "", http.StatusNotFound},
				{"PUT", "/app/", "Authorization: Bearer " + key + "\r\n", http.StatusUnauthorized},
			},
		},
	} {
		t.Run(name, func(t *testing.T) {
			addr := freeAddr(t)
			cfg := adaptFront(t, "{\n\tadmin off\n\tlog {\n\t\tlevel ERROR\n\t}\n}\nhttp://"+addr+" {\n\troute {\n\t\t"+
				tc.handler(addr)+"\n\t\trespond \"next handler\" 200\n\t}\n}\n")
			if err := caddy.Load([]byte(cfg), true); err != nil {
				t.Fatal(err)
			}
			defer func() { stopCaddy(t) }()
			for _, rf := range tc.refusals {
				status, err := sendWithheld(addr, rf.method, rf.path, rf.headers)
				if err != nil || status != rf.status {
					t.Errorf("%s %s with a withheld body: %d, %v; want %d at once", rf.method, rf.path, status, err, rf.status)
				}
			}
		})
	}
}

// sendWithheld sends a request that announces a 4096-byte body, sends
// none, and reads the answer's status within 2 seconds.
func sendWithheld(addr, method, path, headers string) (int, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	if _, err := fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: %s\r\n%sContent-Length: 4096\r\n\r\n", method, path, addr, headers); err != nil {
		return 0, err
	}
	if err := conn.SetReadDeadline(time.Now().Add(2 * time.Second)); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// A refusal sent while the client is still sending its body is read by
// the client: the server keeps taking the body for a moment after the
// answer instead of closing a socket with unread bytes, which resets the
// connection under a client still writing (Go's client then reports the
// reset, not the answer). Each request announces 64 MiB; after the answer
// the test goes on sending, 64 KiB every 6 ms, which must all be accepted.
func TestRefusalsLingerForTheBody(t *testing.T) {
	dir := t.TempDir()
	addr := freeAddr(t)
	cfg := adaptFront(t, "{\n\tadmin off\n\tlog {\n\t\tlevel ERROR\n\t}\n}\nhttp://"+addr+` {
	route /front/* {
		uri strip_prefix /front
		oci_front {
			mirror docker.io
			token {
				realm http://127.0.0.1:1/auth
				service registry.test
				proxy
			}
		}
	}
	route {
		oci_registry {
			storage `+filepath.Join(dir, "store")+`
			max_blob_size 1MiB
		}
	}
}
`)
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}
	defer func() { stopCaddy(t) }()
	for _, rf := range []struct {
		method, path, headers string
		status                int
	}{
		// registry: a monolithic push over max_blob_size, refused before its body is read
		{"POST", "/v2/team/big/blobs/uploads/?digest=sha256:" + strings.Repeat("a", 64), "", http.StatusRequestEntityTooLarge},
		// registry: no such route
		{"PUT", "/v2/team/big/nothing", "", http.StatusNotFound},
		// token proxy (GuardUnreadBody)
		{"POST", "/front/_oci/token", "Content-Type: text/plain\r\n", http.StatusUnsupportedMediaType},
		// front refusal (GuardUnreadBody)
		{"PUT", "/front/v2/app/manifests/v1", "Authorization: Bearer a\r\nAuthorization: Bearer b\r\n", http.StatusBadRequest},
	} {
		status, err := refuseWhileSending(addr, rf.method, rf.path, rf.headers)
		if err != nil || status != rf.status {
			t.Errorf("%s %s while sending its body: %d, %v; want %d and the body still taken", rf.method, rf.path, status, err, rf.status)
		}
	}
}

// refuseWhileSending announces a 64 MiB body, sends 64 KiB of it, reads
// the answer, then sends up to 2 MiB more in writes 6 ms apart, for
// 250 ms and at least 3 writes. The server lingers 500 ms from its answer
// (authscope.lingerFor), which the client reads some time after: a
// loaded machine stretches the sleeps, and 32 writes could outlast the
// linger. Without a linger the reset comes at once, so the first writes
// already fail.
func refuseWhileSending(addr, method, path, headers string) (int, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	if _, err := fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: %s\r\n%sContent-Length: %d\r\n\r\n", method, path, addr, headers, 64<<20); err != nil {
		return 0, err
	}
	chunk := make([]byte, 64<<10)
	if _, err := conn.Write(chunk); err != nil {
		return 0, err
	}
	if err := conn.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return 0, err
	}
	// The status line and headers only: a chunked answer's end may come
	// when the server is done with the request.
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, err
	}
	answered := time.Now()
	for i := 0; i < 32 && (i < 3 || time.Since(answered) < 250*time.Millisecond); i++ {
		time.Sleep(6 * time.Millisecond)
		if _, err := conn.Write(chunk); err != nil {
			return resp.StatusCode, fmt.Errorf("write %d after the answer: %w", i, err)
		}
	}
	return resp.StatusCode, nil
}
