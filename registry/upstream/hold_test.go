package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// TestHeldUpstreamNotAsked: an upstream that answered 429 with a
// Retry-After is not asked again before it, by any request; the requests
// in between get the 429 at once, with the time left. Before, the hold
// was only read by scheduled sync: on the built binary, 20 pulls of
// made-up names behind an upstream answering 429 "Retry-After: 60" sent
// 20 upstream requests, and 60 (three attempts each) without a
// Retry-After, keeping the upstream's limit on the mirror for everyone.
func TestHeldUpstreamNotAsked(t *testing.T) {
	var hits atomic.Int32
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		w.Header().Set("Retry-After", "60")
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	defer s.Close()
	rec := &recorder{}
	c := newClient(t, Config{URLs: []string{s.URL}, Attempts: 3, OnResponse: rec.on})
	for i := range 20 {
		_, err := c.Do(context.Background(), http.MethodGet, testRepo, testPath, nil)
		var ue *Error
		if !errors.As(err, &ue) || ue.Status != http.StatusTooManyRequests || !ue.Temporary() {
			t.Fatalf("request %d: err = %v, want temporary *Error 429", i, err)
		}
		if ue.RetryAfter <= 50*time.Second || ue.RetryAfter > 60*time.Second {
			t.Fatalf("request %d: RetryAfter = %s, want the ~60s left", i, ue.RetryAfter)
		}
	}
	if n := hits.Load(); n != 1 {
		t.Errorf("upstream asked %d times in its Retry-After window, want 1", n)
	}
	if n := len(rec.got()); n != 1 {
		t.Errorf("OnResponse called %d times, want 1 (a held request is no exchange)", n)
	}
	if until := c.HoldUntil(); time.Until(until) <= 50*time.Second {
		t.Errorf("HoldUntil = %s, want ~60s ahead", until)
	}
}

// TestHeldUpstreamNextURL: a hold is the answering URL's: the next URL
// serves while the first is held, and the first is not asked meanwhile.
func TestHeldUpstreamNextURL(t *testing.T) {
	var firstHits, secondHits atomic.Int32
	first := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		firstHits.Add(1)
		w.Header().Set("Retry-After", "60")
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	defer first.Close()
	second := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		secondHits.Add(1)
		_, _ = w.Write([]byte("ok"))
	}))
	defer second.Close()
	c := newClient(t, Config{URLs: []string{first.URL, second.URL}, Attempts: 3})
	for range 5 {
		doOK(t, c)
	}
	if n := firstHits.Load(); n != 1 {
		t.Errorf("held first URL asked %d times, want 1", n)
	}
	if n := secondHits.Load(); n != 5 {
		t.Errorf("second URL asked %d times, want 5", n)
	}
	if until := c.HoldUntil(); !until.IsZero() {
		t.Errorf("HoldUntil = %s with the second URL free, want zero", until)
	}
}

// TestHoldWithoutRetryAfterGrows: 429s without Retry-After (Docker Hub's
// pull limit sends none) hold the upstream for RetryDelay, doubled by
// each one since its last success up to MaxRetryWait, and a success
// starts again from RetryDelay. With a fixed RetryDelay, a flood of pulls
// still asked a limiting upstream ten times a second (48 upstream
// requests for 20 sequential pulls on the binary).
func TestHoldWithoutRetryAfterGrows(t *testing.T) {
	var hits atomic.Int32
	var ok atomic.Bool
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		if ok.Load() {
			_, _ = w.Write([]byte("ok"))
			return
		}
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	defer s.Close()
	const delay, maxWait = 50 * time.Millisecond, 150 * time.Millisecond
	c := newClient(t, Config{URLs: []string{s.URL}, Attempts: 1, RetryDelay: delay, MaxRetryWait: maxWait})
	limited := func(want time.Duration) {
		t.Helper()
		time.Sleep(time.Until(c.HoldUntil()))
		before := hits.Load()
		if _, err := c.Do(context.Background(), http.MethodGet, testRepo, testPath, nil); err == nil {
			t.Fatal("a 429 succeeded")
		}
		if n := hits.Load() - before; n != 1 {
			t.Fatalf("upstream asked %d times, want 1", n)
		}
		hold := time.Until(c.HoldUntil())
		if hold <= want-delay/2 || hold > want {
			t.Fatalf("held for %s, want %s", hold, want)
		}
		for range 10 {
			if _, err := c.Do(context.Background(), http.MethodGet, testRepo, testPath, nil); err == nil {
				t.Fatal("a held request succeeded")
			}
		}
		if n := hits.Load() - before; n != 1 {
			t.Fatalf("upstream asked %d times while held, want 1", n)
		}
	}
	limited(delay)
	limited(2 * delay)
	limited(maxWait)
	limited(maxWait)
	time.Sleep(time.Until(c.HoldUntil()))
	ok.Store(true)
	doOK(t, c)
	ok.Store(false)
	limited(delay)
}

// TestHeldUpstream503: a 503 with a Retry-After holds its URL as a 429
// does; one without holds nothing (it may be one repository's fault).
// Before, 20 requests to an upstream answering 503 "Retry-After: 60"
// sent 20.
func TestHeldUpstream503(t *testing.T) {
	for _, tt := range []struct {
		retryAfter string
		want       int32
	}{{"60", 1}, {"", 20}} {
		var hits atomic.Int32
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			hits.Add(1)
			if tt.retryAfter != "" {
				w.Header().Set("Retry-After", tt.retryAfter)
			}
			w.WriteHeader(http.StatusServiceUnavailable)
		}))
		c := newClient(t, Config{URLs: []string{s.URL}, Attempts: 1})
		for range 20 {
			_, err := c.Do(context.Background(), http.MethodGet, testRepo, testPath, nil)
			var ue *Error
			if !errors.As(err, &ue) || ue.Status != http.StatusServiceUnavailable || !ue.Temporary() {
				t.Fatalf("err = %v, want temporary *Error 503 (held or not)", err)
			}
		}
		s.Close()
		if n := hits.Load(); n != tt.want {
			t.Errorf("Retry-After %q: upstream asked %d times, want %d", tt.retryAfter, n, tt.want)
		}
	}
}

// TestHeldByTokenService: a token service that answers 429 holds the
// registry it serves tokens for: pulls of made-up names (a token each)
// stop asking it. Before, 20 pulls of 20 names sent it 20 requests.
func TestHeldByTokenService(t *testing.T) {
	var tokenHits, regHits atomic.Int32
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		tokenHits.Add(1)
		w.Header().Set("Retry-After", "60")
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	defer ts.Close()
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		regHits.Add(1)
		w.Header().Set("WWW-Authenticate", `Bearer realm="`+ts.URL+`",service="registry.test"`)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	defer reg.Close()
	c := newClient(t, Config{URLs: []string{reg.URL}, Attempts: 3})
	for i := range 20 {
		_, err := c.Do(context.Background(), http.MethodGet, fmt.Sprintf("made/up%d", i), testPath, nil)
		var ue *Error
		if !errors.As(err, &ue) || ue.Status != http.StatusTooManyRequests {
			t.Fatalf("pull %d: err = %v, want *Error 429", i, err)
		}
	}
	if n := tokenHits.Load(); n != 1 {
		t.Errorf("token service asked %d times in its Retry-After window, want 1", n)
	}
	if n := regHits.Load(); n > 1 {
		t.Errorf("registry asked %d times, want at most the first challenge", n)
	}
}
