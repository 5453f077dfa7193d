package upstream

import (
	"context"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const rebindName = "rebind.test"

var rebindBlob = "blobs/sha256:" + strings.Repeat("b", 64)

// TestRedirectRebindingRefused: a redirect to a name that answers a
// public address when the redirect is checked and 0.0.0.0 (which reaches
// this machine's own services) when it is dialled gets nothing sent
// there: the rule holds for the address connected to, not the one looked
// up first.
func TestRedirectRebindingRefused(t *testing.T) {
	internal := newTarget(t, false)
	dns := newDNSServer(t)
	dns.answer(rebindName, "203.0.113.5", "0.0.0.0")
	to := strings.Replace(internal.URL, "127.0.0.1", rebindName, 1) + "/blob"
	reg := newRedirectingRegistry(t, false, func(*http.Request) string { return to })
	c := newClient(t, Config{URLs: []string{reg.URL}, Username: "bob", Password: "pw", Attempts: 1, resolver: dns.resolver()})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := c.Do(ctx, http.MethodGet, testRepo, rebindBlob, nil)
	if err == nil {
		resp.Body.Close()
	}
	if n := len(internal.seen()); n != 0 {
		t.Fatalf("the rebound address got %d requests (err %v)", n, err)
	}
	if !errors.Is(err, errInternalAddress) {
		t.Fatalf("Do: %v, want the address refused", err)
	}
	if n := dns.queries(rebindName); n < 2 {
		t.Fatalf("%s looked up %d times; the test wants a lookup before the dial's", rebindName, n)
	}
}

// TestPooledConnectionNotReusedElsewhere: a kept-alive connection to a
// configured upstream (which may be anywhere: the operator named it) is
// not reused by a redirect from another upstream to the same host and
// port, once the name answers an address that passes the check: that hop
// dials anew, under the redirect's rule.
func TestPooledConnectionNotReusedElsewhere(t *testing.T) {
	var mu sync.Mutex
	var paths []string
	first := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		paths = append(paths, r.URL.Path)
		mu.Unlock()
		if strings.HasPrefix(r.URL.Path, "/v2/") {
			w.WriteHeader(http.StatusServiceUnavailable) // on to the next upstream
			return
		}
		_, _ = w.Write([]byte("internal"))
	}))
	defer first.Close()
	dns := newDNSServer(t)
	// The first upstream's dial; the redirect's check; the redirect's dial.
	dns.answer(rebindName, "0.0.0.0", "203.0.113.5", "0.0.0.0")
	firstURL := strings.Replace(first.URL, "127.0.0.1", rebindName, 1)
	second := newRedirectingRegistry(t, false, func(*http.Request) string { return firstURL + "/blob" })
	c := newClient(t, Config{URLs: []string{firstURL, second.URL}, Username: "bob", Password: "pw", Attempts: 1, resolver: dns.resolver()})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := c.Do(ctx, http.MethodGet, testRepo, rebindBlob, nil)
	if err == nil {
		resp.Body.Close()
	}
	mu.Lock()
	defer mu.Unlock()
	if len(paths) != 1 || !strings.HasPrefix(paths[0], "/v2/") {
		t.Fatalf("the first upstream got %q (err %v), want only its own request", paths, err)
	}
	if !errors.Is(err, errInternalAddress) {
		t.Fatalf("Do: %v, want the address refused", err)
	}
}

// TestTokenRealmRebindingRefused: an https realm on a name that answers a
// public address when the realm is checked and 0.0.0.0 when dialled gets
// no token request (which would carry the mirror's credentials).
func TestTokenRealmRebindingRefused(t *testing.T) {
	var asked atomic.Int32
	tokens := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		asked.Add(1)
		_, _ = w.Write([]byte(`{"token":"` + testToken + `"}`))
	}))
	defer tokens.Close()
	// httptest's certificate names example.com; the mirror trusts it as
	// an operator's CA file.
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tokens.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	dns := newDNSServer(t)
	dns.answer("example.com", "203.0.113.5", "0.0.0.0")
	realm := strings.Replace(tokens.URL, "127.0.0.1", "example.com", 1) + "/token"
	var hits atomic.Int32
	reg := newBearerRegistry(t, realm, &hits)
	c := newClient(t, Config{URLs: []string{reg.URL}, Username: "bob", Password: "pw", Attempts: 1, CAFile: ca, resolver: dns.resolver()})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := c.Do(ctx, http.MethodGet, testRepo, testPath, nil)
	if err == nil {
		resp.Body.Close()
	}
	if n := asked.Load(); n != 0 {
		t.Fatalf("the rebound realm got %d token requests (err %v)", n, err)
	}
	var ue *Error
	if !errors.As(err, &ue) || ue.Status != http.StatusUnauthorized || !strings.Contains(ue.Message, "realm") {
		t.Fatalf("Do: %v, want the realm refused", err)
	}
	if n := dns.queries("example.com"); n < 2 {
		t.Fatalf("example.com looked up %d times; the test wants a lookup before the dial's", n)
	}
}

// TestRedirectThroughProxy: through a proxy the mirror connects only to
// the proxy, which the operator configured (here at 0.0.0.0, where no
// redirect may lead) and which resolves the target itself; the target is
// still checked as far as the mirror can see it.
func TestRedirectThroughProxy(t *testing.T) {
	var mu sync.Mutex
	var asked []string
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		asked = append(asked, r.RequestURI)
		mu.Unlock()
		_, _ = w.Write([]byte("via proxy"))
	}))
	defer proxy.Close()
	proxyURL, _ := url.Parse(strings.Replace(proxy.URL, "127.0.0.1", "0.0.0.0", 1))
	useProxy := func(r *http.Request) (*url.URL, error) {
		if r.URL.Hostname() == "127.0.0.1" { // NO_PROXY=127.0.0.1
			return nil, nil
		}
		return proxyURL, nil
	}
	dns := newDNSServer(t) // knows no name: storage.test resolves only at the proxy
	for _, tt := range []struct {
		to   string
		want []string // what the proxy is asked
	}{
		{"http://storage.test/blob", []string{"http://storage.test/blob"}},
		{"http://169.254.169.254/latest/meta-data/", nil},
	} {
		t.Run(tt.to, func(t *testing.T) {
			mu.Lock()
			asked = nil
			mu.Unlock()
			reg := newRedirectingRegistry(t, false, func(*http.Request) string { return tt.to })
			c := newClient(t, Config{URLs: []string{reg.URL}, Username: "bob", Password: "pw", Attempts: 1,
				resolver: dns.resolver(), proxy: useProxy})
			resp, err := c.Do(context.Background(), http.MethodGet, testRepo, rebindBlob, nil)
			if err == nil {
				resp.Body.Close()
			}
			mu.Lock()
			defer mu.Unlock()
			if !slices.Equal(asked, tt.want) {
				t.Fatalf("the proxy was asked %q, want %q (err %v)", asked, tt.want, err)
			}
			if tt.want == nil && !errors.Is(err, errInternalAddress) {
				t.Fatalf("Do: %v, want the address refused", err)
			}
			if tt.want != nil && err != nil {
				t.Fatalf("Do: %v", err)
			}
		})
	}
}

// TestDialRule: the rule on the resolved address of one connection
// attempt, IPv4-mapped IPv6 judged as IPv4.
func TestDialRule(t *testing.T) {
	tests := []struct {
		addr            string
		public, private bool // allowed from a public upstream, from a private one
	}{
		{"203.0.113.5:443", true, true},
		{"[2001:db8::1]:443", true, true},
		{"127.0.0.1:80", false, true},
		{"[::1]:80", false, true},
		{"10.1.2.3:80", false, true},
		{"[::ffff:10.1.2.3]:80", false, true},
		{"[fd00::1]:80", false, true},
		{"169.254.169.254:80", false, false},
		{"[::ffff:169.254.169.254]:80", false, false},
		{"[fe80::1%lo]:80", false, false},
		{"0.0.0.0:80", false, false},
		{"[::]:80", false, false},
		{"224.0.0.1:80", false, false},
		{"not-an-address", false, false},
	}
	for _, tt := range tests {
		if got := dialRule(classPublic)("tcp", tt.addr, nil) == nil; got != tt.public {
			t.Errorf("%s from a public upstream: allowed %v, want %v", tt.addr, got, tt.public)
		}
		if got := dialRule(classInternal)("tcp", tt.addr, nil) == nil; got != tt.private {
			t.Errorf("%s from a private upstream: allowed %v, want %v", tt.addr, got, tt.private)
		}
		if dialRule(classNever) != nil {
			t.Errorf("the configured upstream's pool has a rule")
		}
	}
}
