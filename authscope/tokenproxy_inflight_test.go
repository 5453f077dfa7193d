package authscope

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
)

// TestTokenProxyRequestsPerClientBounded: each token request the proxy
// forwards holds a connection to the token service until it answers, so
// one client's requests in flight are bounded (TokenRequestsPerClient);
// another client's still go through at once. On the binary, before, four
// HTTP/2 connections of 250 anonymous requests held 1,000 connections to
// a slow token service (every descriptor under a 512 limit). Here, before,
// all 20 of one client's requests reached the token service at once.
func TestTokenProxyRequestsPerClientBounded(t *testing.T) {
	arrived := make(chan string, 64)
	hold := make(chan struct{})
	var mu sync.Mutex
	inFlight, peak := map[string]int{}, map[string]int{}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := r.Header.Get("X-Forwarded-For")
		mu.Lock()
		inFlight[c]++
		peak[c] = max(peak[c], inFlight[c])
		mu.Unlock()
		arrived <- c
		<-hold
		mu.Lock()
		inFlight[c]--
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"token":"x"}`)
	}))
	t.Cleanup(up.Close)
	u, _ := url.Parse(up.URL + "/auth")
	srv := httptest.NewServer(&TokenProxy{Upstream: u, Service: testService, Names: testNames(t),
		ClientIP: func(r *http.Request) string { return r.Header.Get("X-Client") }})
	t.Cleanup(srv.Close)
	get := func(client string, i int) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("%s%s?scope=repository:r%d:pull", srv.URL, TokenPath, i), nil)
		req.Header.Set("X-Client", client)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
			return 0, ""
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("Retry-After")
	}

	const flood = 20
	var wg sync.WaitGroup
	codes := make([]int, flood)
	for i := range flood {
		wg.Go(func() { codes[i], _ = get("192.0.2.1", i) })
	}
	for range TokenRequestsPerClient {
		<-arrived
	}
	// Another client is not held behind the first one's requests.
	wg.Go(func() {
		if code, _ := get("198.51.100.7", 0); code != http.StatusOK {
			t.Errorf("the other client's token request: %d, want 200", code)
		}
	})
	for c := range arrived {
		if c == "198.51.100.7" {
			break
		}
	}
	mu.Lock()
	flooding := inFlight["192.0.2.1"]
	mu.Unlock()
	close(hold)
	wg.Wait()
	if flooding > TokenRequestsPerClient || peak["192.0.2.1"] > TokenRequestsPerClient {
		t.Errorf("one client had %d token requests at the token service at once (peak %d); want at most %d",
			flooding, peak["192.0.2.1"], TokenRequestsPerClient)
	}
	for i, code := range codes {
		if code != http.StatusOK {
			t.Errorf("flood request %d: %d; want 200 once a turn came", i, code)
		}
	}
}

// TestTokenProxyRequestPastBoundRefused: a request that finds its
// client's turns taken for TurnWait is answered 429 with Retry-After and
// never reaches the token service.
func TestTokenProxyRequestPastBoundRefused(t *testing.T) {
	arrived := make(chan struct{}, 64)
	hold := make(chan struct{})
	var reached sync.WaitGroup
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-hold
		_, _ = io.WriteString(w, `{"token":"x"}`)
	}))
	t.Cleanup(up.Close)
	u, _ := url.Parse(up.URL + "/auth")
	srv := httptest.NewServer(&TokenProxy{Upstream: u, Service: testService, Names: testNames(t)})
	t.Cleanup(srv.Close)
	for i := range TokenRequestsPerClient {
		reached.Go(func() {
			resp, err := http.Get(fmt.Sprintf("%s%s?scope=repository:r%d:pull", srv.URL, TokenPath, i))
			if err == nil {
				resp.Body.Close()
			}
		})
		<-arrived
	}
	resp, err := http.Get(srv.URL + TokenPath + "?scope=repository:late:pull")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	close(hold)
	reached.Wait()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Errorf("a request past the bound: %d (Retry-After %q); want 429 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if n := len(arrived); n != 0 {
		t.Errorf("%d requests past the bound reached the token service", n)
	}
}
