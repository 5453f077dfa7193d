package upstream

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// target is a server a hostile upstream redirects to; it records the
// Authorization of every request it gets.
type target struct {
	*httptest.Server
	mu   sync.Mutex
	auth []string
}

func newTarget(t *testing.T, tlsServer bool) *target {
	t.Helper()
	tg := &target{}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tg.mu.Lock()
		tg.auth = append(tg.auth, r.Header.Get("Authorization"))
		tg.mu.Unlock()
		_, _ = w.Write([]byte("internal"))
	})
	if tlsServer {
		tg.Server = httptest.NewTLSServer(h)
	} else {
		tg.Server = httptest.NewServer(h)
	}
	t.Cleanup(tg.Close)
	return tg
}

func (tg *target) seen() []string {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	return append([]string(nil), tg.auth...)
}

// newRedirectingRegistry wants Basic bob:pw (asking for it with a
// challenge) and answers every authorized request with a 307 to
// location(r), or serves "same-origin" on /moved/.
func newRedirectingRegistry(t *testing.T, tlsServer bool, location func(r *http.Request) string) *httptest.Server {
	t.Helper()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "bob" || p != "pw" {
			w.Header().Set("WWW-Authenticate", `Basic realm="registry"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if strings.HasPrefix(r.URL.Path, "/moved/") {
			_, _ = w.Write([]byte("same-origin"))
			return
		}
		http.Redirect(w, r, location(r), http.StatusTemporaryRedirect)
	})
	var s *httptest.Server
	if tlsServer {
		s = httptest.NewTLSServer(h)
	} else {
		s = httptest.NewServer(h)
	}
	t.Cleanup(s.Close)
	return s
}

// TestRedirectsOfDocumentsRefused: a redirect of a manifest, tag list or
// referrers answer is not followed (an internal URL would otherwise be
// fetched and its answer returned as upstream's).
func TestRedirectsOfDocumentsRefused(t *testing.T) {
	for _, path := range []string{"manifests/latest", "tags/list", "referrers/sha256:" + strings.Repeat("a", 64)} {
		t.Run(path, func(t *testing.T) {
			internal := newTarget(t, false)
			reg := newRedirectingRegistry(t, false, func(*http.Request) string { return internal.URL + "/secret" })
			c := newClient(t, Config{URLs: []string{reg.URL}, Username: "bob", Password: "pw"})
			resp, err := c.Do(context.Background(), http.MethodGet, testRepo, path, nil)
			if err == nil {
				resp.Body.Close()
				t.Fatalf("Do followed the redirect: status %d", resp.StatusCode)
			}
			var ue *Error
			if !errors.As(err, &ue) || ue.Status != http.StatusTemporaryRedirect {
				t.Fatalf("err = %v, want *Error 307", err)
			}
			if n := len(internal.seen()); n != 0 {
				t.Fatalf("the redirect target was asked %d times", n)
			}
		})
	}
}

// TestBlobRedirects: a blob may go to storage, with the mirror's
// credentials only while scheme, host and port stay the same; never from
// https to http, and not in endless chains.
func TestBlobRedirects(t *testing.T) {
	blob := "blobs/sha256:" + strings.Repeat("b", 64)
	t.Run("another port of the same host gets no credentials", func(t *testing.T) {
		storage := newTarget(t, false)
		reg := newRedirectingRegistry(t, false, func(*http.Request) string { return storage.URL + "/blob" })
		c := newClient(t, Config{URLs: []string{reg.URL}, Username: "bob", Password: "pw"})
		resp, err := c.Do(context.Background(), http.MethodGet, testRepo, blob, nil)
		if err != nil {
			t.Fatalf("Do: %v", err)
		}
		resp.Body.Close()
		if got := storage.seen(); len(got) != 1 || got[0] != "" {
			t.Fatalf("storage saw Authorization %q, want one request without", got)
		}
	})
	t.Run("another host name of the same address gets no credentials", func(t *testing.T) {
		storage := newTarget(t, false)
		reg := newRedirectingRegistry(t, false, func(*http.Request) string {
			return strings.Replace(storage.URL, "127.0.0.1", "localhost", 1) + "/blob"
		})
		c := newClient(t, Config{URLs: []string{reg.URL}, Username: "bob", Password: "pw"})
		resp, err := c.Do(context.Background(), http.MethodGet, testRepo, blob, nil)
		if err != nil {
			t.Fatalf("Do: %v", err)
		}
		resp.Body.Close()
		if got := storage.seen(); len(got) != 1 || got[0] != "" {
			t.Fatalf("storage saw Authorization %q, want one request without", got)
		}
	})
	t.Run("same origin keeps credentials", func(t *testing.T) {
		reg := newRedirectingRegistry(t, false, func(*http.Request) string { return "/moved/blob" })
		c := newClient(t, Config{URLs: []string{reg.URL}, Username: "bob", Password: "pw"})
		resp, err := c.Do(context.Background(), http.MethodGet, testRepo, blob, nil)
		if err != nil {
			t.Fatalf("Do: %v (the registry refuses requests without credentials)", err)
		}
		resp.Body.Close()
	})
	t.Run("https to http refused", func(t *testing.T) {
		plain := newTarget(t, false)
		reg := newRedirectingRegistry(t, true, func(*http.Request) string { return plain.URL + "/blob" })
		c := newClient(t, Config{URLs: []string{reg.URL}, Username: "bob", Password: "pw", Transport: reg.Client().Transport})
		resp, err := c.Do(context.Background(), http.MethodGet, testRepo, blob, nil)
		if err == nil {
			resp.Body.Close()
			t.Fatal("Do followed a redirect from https to http")
		}
		if n := len(plain.seen()); n != 0 {
			t.Fatalf("the http target was asked %d times", n)
		}
	})
	t.Run("redirect loop ends", func(t *testing.T) {
		var hits atomic.Int32
		loop := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			http.Redirect(w, r, r.URL.Path, http.StatusFound)
		}))
		defer loop.Close()
		c := newClient(t, Config{URLs: []string{loop.URL}, Attempts: 1})
		resp, err := c.Do(context.Background(), http.MethodGet, testRepo, blob, nil)
		if err == nil {
			resp.Body.Close()
			t.Fatal("Do followed a redirect loop to the end")
		}
		if n := hits.Load(); n > maxRedirects {
			t.Fatalf("%d requests in the loop, want at most %d", n, maxRedirects)
		}
	})
}

// TestTokenRealmRule: the realm of a challenge is upstream's word and
// gets a request (and the mirror's credentials) only when it is https,
// or plain http on a plain-http upstream's own host name.
func TestTokenRealmRule(t *testing.T) {
	// A TLS token service; its certificate names example.com, which the
	// transport below dials on loopback.
	var tlsHits atomic.Int32
	tlsTokens := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		tlsHits.Add(1)
		_, _ = w.Write([]byte(`{"token":"` + testToken + `"}`))
	}))
	defer tlsTokens.Close()
	tlsPort := tlsTokens.Listener.Addr().(*net.TCPAddr).Port
	tr := tlsTokens.Client().Transport.(*http.Transport).Clone()
	dial := tr.DialContext
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		return dial(ctx, network, strings.Replace(addr, "example.com", "127.0.0.1", 1))
	}

	tests := []struct {
		name     string
		realm    func(plain *tokenServer) string
		upstream func(t *testing.T, realm string) *httptest.Server // default: plain http
		want     bool
	}{
		{name: "http, same host, other port", want: true, realm: func(p *tokenServer) string { return p.URL + "/token" }},
		{name: "https on another host", want: true, realm: func(*tokenServer) string {
			return "https://example.com:" + strconv.Itoa(tlsPort) + "/token"
		}},
		{name: "http on another host", realm: func(p *tokenServer) string {
			return strings.Replace(p.URL, "127.0.0.1", "localhost", 1) + "/token"
		}},
		{name: "https at the cloud metadata address", realm: func(*tokenServer) string {
			return "https://169.254.169.254/token"
		}},
		{name: "credentials in the realm", realm: func(p *tokenServer) string {
			return strings.Replace(p.URL, "http://", "http://u:p@", 1) + "/token"
		}},
		{name: "downgrade from an https upstream", realm: func(p *tokenServer) string { return p.URL + "/token" },
			upstream: func(t *testing.T, realm string) *httptest.Server {
				s := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
					w.Header().Set("WWW-Authenticate", `Bearer realm="`+realm+`"`)
					w.WriteHeader(http.StatusUnauthorized)
				}))
				t.Cleanup(s.Close)
				return s
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tlsHits.Store(0)
			plain := newTokenServer(t)
			realm := tt.realm(plain)
			var reg *httptest.Server
			if tt.upstream != nil {
				reg = tt.upstream(t, realm)
			} else {
				var hits atomic.Int32
				reg = newBearerRegistry(t, realm, &hits)
			}
			// httptest's TLS servers share one certificate, which tr trusts.
			c := newClient(t, Config{URLs: []string{reg.URL}, Username: "bob", Password: "pw", Transport: tr})
			resp, err := c.Do(context.Background(), http.MethodGet, testRepo, testPath, nil)
			if err == nil {
				resp.Body.Close()
			}
			asked := plain.hits.Load() + tlsHits.Load()
			if tt.want {
				if err != nil || asked != 1 {
					t.Fatalf("err %v, token requests %d; want success with one", err, asked)
				}
				return
			}
			if err == nil || asked != 0 || !strings.Contains(err.Error(), "realm") {
				t.Fatalf("err %v, token requests %d; want the realm refused and no request", err, asked)
			}
		})
	}
}

// TestTokenServiceRedirectNotFollowed: the token request carries the
// mirror's credentials; a redirect of it is a failure, not a hop.
func TestTokenServiceRedirectNotFollowed(t *testing.T) {
	elsewhere := newTarget(t, false)
	tokens := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, elsewhere.URL+"/token", http.StatusTemporaryRedirect)
	}))
	defer tokens.Close()
	var hits atomic.Int32
	reg := newBearerRegistry(t, tokens.URL+"/token", &hits)
	c := newClient(t, Config{URLs: []string{reg.URL}, Username: "bob", Password: "pw"})
	resp, err := c.Do(context.Background(), http.MethodGet, testRepo, testPath, nil)
	if err == nil {
		resp.Body.Close()
		t.Fatal("Do succeeded")
	}
	if got := elsewhere.seen(); len(got) != 0 {
		t.Fatalf("the redirect target got %q", got)
	}
}

// TestNewRefusesCredentialsInURL: user:password@ in a URL is refused,
// and the error does not repeat the password.
func TestNewRefusesCredentialsInURL(t *testing.T) {
	for _, u := range []string{"https://alice:s3cret@registry.example", "https://alice:s3cret@registry.example:port"} {
		_, err := New(Config{URLs: []string{u}})
		if err == nil {
			t.Fatalf("%s accepted", u)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("error repeats the password: %v", err)
		}
	}
}
