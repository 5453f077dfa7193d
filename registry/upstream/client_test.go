package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	testRepo  = "library/alpine"
	testPath  = "manifests/latest"
	testToken = "tok-123"
)

// recorder collects OnResponse calls.
type recorder struct {
	mu       sync.Mutex
	statuses []int
}

func (r *recorder) on(_ string, status int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.statuses = append(r.statuses, status)
}

func (r *recorder) got() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.statuses)
}

// tokenServer is a fake token service handing out testToken.
type tokenServer struct {
	*httptest.Server
	hits  atomic.Int32
	mu    sync.Mutex
	auth  []string
	query []url.Values
}

func newTokenServer(t *testing.T) *tokenServer {
	t.Helper()
	ts := &tokenServer{}
	ts.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ts.hits.Add(1)
		ts.mu.Lock()
		ts.auth = append(ts.auth, r.Header.Get("Authorization"))
		ts.query = append(ts.query, r.URL.Query())
		ts.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"token": testToken, "expires_in": 300})
	}))
	t.Cleanup(ts.Close)
	return ts
}

// newBearerRegistry serves 200 to requests bearing testToken and a Bearer
// challenge pointing at realm to everything else.
func newBearerRegistry(t *testing.T, realm string, hits *atomic.Int32) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if r.URL.Path != "/v2/"+testRepo+"/"+testPath {
			http.NotFound(w, r)
			return
		}
		if r.Header.Get("Authorization") != "Bearer "+testToken {
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+realm+`",service="registry.test"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		_, _ = w.Write([]byte("ok"))
	}))
	t.Cleanup(s.Close)
	return s
}

func newClient(t *testing.T, cfg Config) *Client {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

func doOK(t *testing.T, c *Client) {
	t.Helper()
	resp, err := c.Do(context.Background(), http.MethodGet, testRepo, testPath, nil)
	if err != nil {
		t.Fatalf("Do: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d, want 200", resp.StatusCode)
	}
}

func TestBearerTokenFlow(t *testing.T) {
	tests := []struct {
		name      string
		user      string
		pass      string
		wantAuth  string
		otherHost bool // realm names the token service by another host name
	}{
		{name: "anonymous", wantAuth: ""},
		{name: "credentials as Basic", user: "alice", pass: "s3cret", wantAuth: "Basic YWxpY2U6czNjcmV0"},
		{name: "realm on another host", otherHost: true, user: "alice", pass: "s3cret", wantAuth: "Basic YWxpY2U6czNjcmV0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newTokenServer(t)
			realm := ts.URL + "/token"
			var rt http.RoundTripper
			if tt.otherHost {
				// Only https takes the mirror to a token service on
				// another host: example.com (which httptest's certificate
				// names), dialled on loopback.
				ts.Close()
				ts.Server = httptest.NewTLSServer(ts.Config.Handler)
				realm = strings.Replace(ts.URL, "127.0.0.1", "example.com", 1) + "/token"
				tr := ts.Client().Transport.(*http.Transport).Clone()
				tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
					return (&net.Dialer{}).DialContext(ctx, network, strings.Replace(addr, "example.com", "127.0.0.1", 1))
				}
				rt = tr
				t.Cleanup(ts.Server.Close)
			}
			var regHits atomic.Int32
			reg := newBearerRegistry(t, realm, &regHits)
			rec := &recorder{}
			c := newClient(t, Config{URLs: []string{reg.URL}, Username: tt.user, Password: tt.pass, OnResponse: rec.on, Transport: rt})

			doOK(t, c)
			doOK(t, c) // token reused: no second token request, no second 401

			if n := ts.hits.Load(); n != 1 {
				t.Errorf("token requests = %d, want 1", n)
			}
			if n := regHits.Load(); n != 3 {
				t.Errorf("registry requests = %d, want 3 (401, retry, reuse)", n)
			}
			ts.mu.Lock()
			auth, q := ts.auth[0], ts.query[0]
			ts.mu.Unlock()
			if auth != tt.wantAuth {
				t.Errorf("token request Authorization = %q, want %q", auth, tt.wantAuth)
			}
			if got, want := q.Get("scope"), "repository:"+testRepo+":pull"; got != want {
				t.Errorf("scope = %q, want %q", got, want)
			}
			if got := q.Get("service"); got != "registry.test" {
				t.Errorf("service = %q, want registry.test", got)
			}
			if got, want := rec.got(), []int{401, 200, 200, 200}; !slices.Equal(got, want) {
				t.Errorf("OnResponse statuses = %v, want %v", got, want)
			}
		})
	}
}

func TestTokenExpiry(t *testing.T) {
	ts := newTokenServer(t)
	var regHits atomic.Int32
	reg := newBearerRegistry(t, ts.URL+"/token", &regHits)
	c := newClient(t, Config{URLs: []string{reg.URL}})
	clock := time.Now()
	c.now = func() time.Time { return clock }

	doOK(t, c)
	clock = clock.Add(200 * time.Second) // inside the token server's expires_in of 300 s, less the early renewal
	doOK(t, c)
	if n := ts.hits.Load(); n != 1 {
		t.Fatalf("token requests before expiry = %d, want 1", n)
	}
	clock = clock.Add(100 * time.Second)
	doOK(t, c)
	if n := ts.hits.Load(); n != 2 {
		t.Fatalf("token requests after expiry = %d, want 2", n)
	}
}

func TestBasicChallenge(t *testing.T) {
	var hits atomic.Int32
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if u, p, ok := r.BasicAuth(); !ok || u != "bob" || p != "pw" {
			w.Header().Set("WWW-Authenticate", `Basic realm="registry"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		_, _ = w.Write([]byte("ok"))
	}))
	defer s.Close()
	c := newClient(t, Config{URLs: []string{s.URL}, Username: "bob", Password: "pw"})
	doOK(t, c)
	doOK(t, c) // Basic is remembered for the host
	if n := hits.Load(); n != 3 {
		t.Errorf("registry requests = %d, want 3", n)
	}
}

func TestMalformedChallenge(t *testing.T) {
	ts := newTokenServer(t)
	tests := []struct {
		name   string
		header string
	}{
		{"unterminated quote", `Bearer realm="http://x`},
		{"garbage", `===`},
		{"bearer without realm", `Bearer service="registry.test"`},
		{"realm not http", `Bearer realm="ftp://` + strings.TrimPrefix(ts.URL, "http://") + `/token"`},
		{"basic without credentials", `Basic realm="r"`},
		{"no header", ``},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				if tt.header != "" {
					w.Header().Set("WWW-Authenticate", tt.header)
				}
				w.WriteHeader(http.StatusUnauthorized)
			}))
			defer s.Close()
			c := newClient(t, Config{URLs: []string{s.URL}})
			resp, err := c.Do(context.Background(), http.MethodGet, testRepo, testPath, nil)
			if err == nil {
				resp.Body.Close()
				t.Fatal("Do succeeded, want error")
			}
			var ue *Error
			if !errors.As(err, &ue) || ue.Status != http.StatusUnauthorized {
				t.Fatalf("err = %#v (%v), want *Error with status 401", err, err)
			}
			if ue.Temporary() {
				t.Errorf("auth failure reported as temporary")
			}
		})
	}
	if n := ts.hits.Load(); n != 0 {
		t.Errorf("token service contacted %d times, want 0", n)
	}
}

func TestRetry429(t *testing.T) {
	var hits atomic.Int32
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if hits.Add(1) <= 2 {
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		_, _ = w.Write([]byte("ok"))
	}))
	defer s.Close()
	rec := &recorder{}
	c := newClient(t, Config{URLs: []string{s.URL}, Attempts: 3, OnResponse: rec.on})
	doOK(t, c)
	if n := hits.Load(); n != 3 {
		t.Errorf("attempts = %d, want 3", n)
	}
	if got, want := rec.got(), []int{429, 429, 200}; !slices.Equal(got, want) {
		t.Errorf("OnResponse statuses = %v, want %v", got, want)
	}
}

func TestRetry429Exhausted(t *testing.T) {
	var hits atomic.Int32
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		w.Header().Set("Retry-After", "0")
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	defer s.Close()
	c := newClient(t, Config{URLs: []string{s.URL}, Attempts: 2})
	_, err := c.Do(context.Background(), http.MethodGet, testRepo, testPath, nil)
	var ue *Error
	if !errors.As(err, &ue) || ue.Status != http.StatusTooManyRequests || !ue.Temporary() {
		t.Fatalf("err = %v, want temporary *Error 429", err)
	}
	if n := hits.Load(); n != 2 {
		t.Errorf("attempts = %d, want 2", n)
	}
}

func TestFailover(t *testing.T) {
	refused := httptest.NewServer(http.NotFoundHandler())
	refusedURL := refused.URL
	refused.Close() // nothing listens there any more

	tests := []struct {
		name       string
		first      func(t *testing.T) (url string, hits *atomic.Int32)
		wantHits   int32
		wantStatus []int
	}{
		{
			name: "503 on first URL",
			first: func(t *testing.T) (string, *atomic.Int32) {
				var hits atomic.Int32
				s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
					hits.Add(1)
					w.Header().Set("Retry-After", "0")
					w.WriteHeader(http.StatusServiceUnavailable)
				}))
				t.Cleanup(s.Close)
				return s.URL, &hits
			},
			wantHits:   2,
			wantStatus: []int{503, 503, 200},
		},
		{
			name: "connection refused on first URL",
			first: func(*testing.T) (string, *atomic.Int32) {
				return refusedURL, &atomic.Int32{}
			},
			wantHits:   0,
			wantStatus: []int{0, 200},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			firstURL, firstHits := tt.first(t)
			var secondHits atomic.Int32
			second := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				secondHits.Add(1)
				if r.URL.Path != "/v2/"+testRepo+"/"+testPath {
					http.NotFound(w, r)
					return
				}
				_, _ = w.Write([]byte("ok"))
			}))
			defer second.Close()
			rec := &recorder{}
			c := newClient(t, Config{URLs: []string{firstURL, second.URL}, Attempts: 2, OnResponse: rec.on})
			doOK(t, c)
			if n := firstHits.Load(); n != tt.wantHits {
				t.Errorf("first URL requests = %d, want %d", n, tt.wantHits)
			}
			if n := secondHits.Load(); n != 1 {
				t.Errorf("second URL requests = %d, want 1", n)
			}
			if got := rec.got(); !slices.Equal(got, tt.wantStatus) {
				t.Errorf("OnResponse statuses = %v, want %v", got, tt.wantStatus)
			}
		})
	}
}

func TestNoFailoverOn404(t *testing.T) {
	first := httptest.NewServer(http.NotFoundHandler())
	defer first.Close()
	var secondHits atomic.Int32
	second := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { secondHits.Add(1) }))
	defer second.Close()
	c := newClient(t, Config{URLs: []string{first.URL, second.URL}})
	_, err := c.Do(context.Background(), http.MethodGet, testRepo, testPath, nil)
	var ue *Error
	if !errors.As(err, &ue) || ue.Status != http.StatusNotFound {
		t.Fatalf("err = %v, want *Error 404", err)
	}
	if n := secondHits.Load(); n != 0 {
		t.Errorf("second URL contacted %d times on a 404, want 0", n)
	}
}

// TestTokenFetchedUpFront: once a host asked for Bearer tokens, a
// repository's first request (and the first after its token expired)
// carries a token fetched before it is sent, for that repository's own
// scope, instead of earning a 401 first.
func TestTokenFetchedUpFront(t *testing.T) {
	var mu sync.Mutex
	var scopes, seen []string // token scopes asked; registry requests as "status path"
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scope := r.URL.Query().Get("scope")
		mu.Lock()
		scopes = append(scopes, scope)
		mu.Unlock()
		_ = json.NewEncoder(w).Encode(map[string]any{"token": "for " + scope, "expires_in": 300})
	}))
	t.Cleanup(ts.Close)
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		repo, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/v2/"), "/manifests/")
		scope := "repository:" + repo + ":pull"
		status := http.StatusOK
		if r.Header.Get("Authorization") != "Bearer for "+scope {
			status = http.StatusUnauthorized
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+ts.URL+`/token",service="registry.test",scope="`+scope+`"`)
		}
		mu.Lock()
		seen = append(seen, strconv.Itoa(status)+" "+repo)
		mu.Unlock()
		w.WriteHeader(status)
	}))
	t.Cleanup(reg.Close)
	c := newClient(t, Config{URLs: []string{reg.URL}})
	clock := time.Now()
	c.now = func() time.Time { return clock }
	get := func(repo string) {
		t.Helper()
		resp, err := c.Do(context.Background(), http.MethodGet, repo, testPath, nil)
		if err != nil {
			t.Fatalf("%s: %v", repo, err)
		}
		resp.Body.Close()
	}
	get("library/a")
	get("library/b")
	clock = clock.Add(time.Hour)
	get("library/a")
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"401 library/a", "200 library/a", "200 library/b", "200 library/a"}; !slices.Equal(seen, want) {
		t.Errorf("registry saw %v, want %v", seen, want)
	}
	if want := []string{"repository:library/a:pull", "repository:library/b:pull", "repository:library/a:pull"}; !slices.Equal(scopes, want) {
		t.Errorf("token scopes %v, want %v", scopes, want)
	}
}

// TestTLSSessionResumed: a new connection to the upstream resumes the
// TLS session of an earlier one instead of a full handshake.
func TestTLSSessionResumed(t *testing.T) {
	var mu sync.Mutex
	var resumed []bool
	s := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		resumed = append(resumed, r.TLS.DidResume)
		mu.Unlock()
	}))
	t.Cleanup(s.Close)
	c := newClient(t, Config{URLs: []string{s.URL}, InsecureSkipVerify: true})
	for range 2 {
		resp, err := c.Do(context.Background(), http.MethodGet, testRepo, testPath, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		c.hc.CloseIdleConnections() // the next request dials anew
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []bool{false, true}; !slices.Equal(resumed, want) {
		t.Errorf("sessions resumed %v, want %v", resumed, want)
	}
}
