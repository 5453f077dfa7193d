package upstream

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// keptTokenBytes is what the client holds in tokens: keys and values.
func keptTokenBytes(c *Client) (n int64, count int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, t := range c.tokens {
		n += int64(len(k) + len(t.value))
	}
	return n, len(c.tokens)
}

// TestKeptTokensBounded: the tokens kept per repository are the callers'
// to multiply (a pull of any made-up name under a mirror's prefix fetches
// one, and Docker Hub gives anonymous tokens for names it does not have),
// so what they hold is bounded, and a request still carries the token
// fetched for it when a flood of others pushed it out meanwhile.
func TestKeptTokensBounded(t *testing.T) {
	const tokenSize = 64 << 10
	pad := strings.Repeat("x", tokenSize)
	tokenOf := func(repo string) string { return repo + "." + pad }
	var tokens atomic.Int32
	var reg *httptest.Server
	reg = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			tokens.Add(1)
			scope := r.URL.Query().Get("scope") // repository:<repo>:pull
			repo := strings.TrimSuffix(strings.TrimPrefix(scope, "repository:"), ":pull")
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]any{"token": tokenOf(repo), "expires_in": 300})
			return
		}
		repo, ok := strings.CutSuffix(strings.TrimPrefix(r.URL.Path, "/v2/"), "/"+testPath)
		if !ok {
			http.NotFound(w, r)
			return
		}
		if r.Header.Get("Authorization") != "Bearer "+tokenOf(repo) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+reg.URL+`/token",service="registry.test"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		_, _ = w.Write([]byte("ok"))
	}))
	t.Cleanup(reg.Close)
	c := newClient(t, Config{URLs: []string{reg.URL}})

	const repos = 600 // 600 tokens of 64 KiB: 37.5 MiB if all were kept
	var next atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, repos)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1); i <= repos; i = next.Add(1) {
				repo := fmt.Sprintf("made/up%d", i)
				resp, err := c.Do(context.Background(), http.MethodGet, repo, testPath, nil)
				if err != nil {
					errs <- fmt.Errorf("%s: %w", repo, err)
					continue
				}
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err) // a request sent without the token fetched for it
	}
	kept, count := keptTokenBytes(c)
	t.Logf("%d token requests; %d tokens kept, %d bytes", tokens.Load(), count, kept)
	if limit := int64(16<<20) + tokenSize + 64; kept > limit {
		t.Fatalf("tokens kept hold %d bytes (%d tokens), want at most %d", kept, count, limit)
	}
	// A repository asked again after the flood still works.
	resp, err := c.Do(context.Background(), http.MethodGet, "made/up1", testPath, nil)
	if err != nil {
		t.Fatalf("made/up1 after the flood: %v", err)
	}
	resp.Body.Close()
}

// TestTokenScopeUnderPathPrefix: an upstream URL with a path (a mirror
// that serves another registry under a prefix) puts the prefix before the
// repository name in requests, and so in the scope of the tokens they
// need. A repository's first request after the host asked for tokens
// fetched one up front for the name without the prefix: it earned a 401,
// and a second token request, every time.
func TestTokenScopeUnderPathPrefix(t *testing.T) {
	var tokens, refused atomic.Int32
	var reg *httptest.Server
	reg = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			tokens.Add(1)
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]any{"token": "for " + r.URL.Query().Get("scope"), "expires_in": 300})
			return
		}
		name, ok := strings.CutSuffix(strings.TrimPrefix(r.URL.Path, "/v2/"), "/"+testPath)
		if !ok {
			http.NotFound(w, r)
			return
		}
		scope := "repository:" + name + ":pull"
		if r.Header.Get("Authorization") != "Bearer for "+scope {
			refused.Add(1)
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+reg.URL+`/token",service="registry.test",scope="`+scope+`"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		_, _ = w.Write([]byte("ok"))
	}))
	t.Cleanup(reg.Close)
	c := newClient(t, Config{URLs: []string{reg.URL + "/docker.io"}})
	for _, repo := range []string{"library/alpine", "library/busybox", "library/debian"} {
		resp, err := c.Do(context.Background(), http.MethodGet, repo, testPath, nil)
		if err != nil {
			t.Fatalf("%s: %v", repo, err)
		}
		resp.Body.Close()
	}
	// The first repository learns the realm from a 401; the others need
	// one token request each and no 401.
	if tokens.Load() != 3 || refused.Load() != 1 {
		t.Fatalf("3 repositories under a path prefix: %d token requests and %d answers 401, want 3 and 1", tokens.Load(), refused.Load())
	}
}

// TestTokenKeptPerName: two upstream URLs on one host under different
// paths are two names for a repository, and a token is for one name. The
// token kept for the first URL's name was sent to the second (the next
// tried when the first answers 5xx), which refused it with a 401.
func TestTokenKeptPerName(t *testing.T) {
	var misfits atomic.Int32
	var reg *httptest.Server
	reg = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]any{"token": "for " + r.URL.Query().Get("scope"), "expires_in": 300})
			return
		}
		name, ok := strings.CutSuffix(strings.TrimPrefix(r.URL.Path, "/v2/"), "/"+testPath)
		if !ok {
			http.NotFound(w, r)
			return
		}
		scope := "repository:" + name + ":pull"
		if auth := r.Header.Get("Authorization"); auth != "Bearer for "+scope {
			if auth != "" {
				misfits.Add(1)
				t.Logf("%s sent with %q", r.URL.Path, auth)
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+reg.URL+`/token",service="registry.test",scope="`+scope+`"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if strings.HasPrefix(name, "down/") {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	}))
	t.Cleanup(reg.Close)
	c := newClient(t, Config{URLs: []string{reg.URL + "/down", reg.URL + "/up"}, Attempts: 1})
	for range 2 {
		resp, err := c.Do(context.Background(), http.MethodGet, "library/alpine", testPath, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	if n := misfits.Load(); n > 0 {
		t.Fatalf("%d requests carried a token for another name", n)
	}
}
