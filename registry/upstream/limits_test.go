package upstream

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"120", 120 * time.Second},
		{" 7 ", 7 * time.Second},
		{"86400", MaxRetryAfter},
		{"99999999999999999999999", MaxRetryAfter},
		{"-5", 0},
		{"+5", 0},
		{"1.5", 0},
		{"0x10", 0},
		{"soon", 0},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0},
		{now.Add(48 * time.Hour).Format(http.TimeFormat), MaxRetryAfter},
	}
	for _, tt := range tests {
		if got := parseRetryAfter(tt.in, now); got != tt.want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

// TestRetryAfterCarried: a 429 that outlasts the retries comes back with
// upstream's Retry-After, bounded.
func TestRetryAfterCarried(t *testing.T) {
	for _, tt := range []struct {
		header string
		want   time.Duration
	}{{"120", 120 * time.Second}, {"100000", MaxRetryAfter}, {"later", 0}} {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Retry-After", tt.header)
			w.WriteHeader(http.StatusTooManyRequests)
		}))
		c := newClient(t, Config{URLs: []string{s.URL}, Attempts: 1})
		_, err := c.Do(context.Background(), http.MethodGet, testRepo, testPath, nil)
		s.Close()
		var ue *Error
		if !errors.As(err, &ue) || ue.Status != http.StatusTooManyRequests {
			t.Fatalf("Retry-After %q: err %v, want a 429", tt.header, err)
		}
		if ue.RetryAfter != tt.want {
			t.Errorf("Retry-After %q: carried %v, want %v", tt.header, ue.RetryAfter, tt.want)
		}
	}
}

// TestResponseHeaderTimeout: an upstream that sends no headers in time
// is a timeout, not an answer.
func TestResponseHeaderTimeout(t *testing.T) {
	release := make(chan struct{})
	s := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-release }))
	defer s.Close()
	defer close(release)
	c := newClient(t, Config{URLs: []string{s.URL}, Attempts: 1, ResponseHeaderTimeout: 100 * time.Millisecond})
	_, err := c.Do(context.Background(), http.MethodGet, testRepo, testPath, nil)
	var ue *Error
	if !errors.As(err, &ue) || !ue.Timeout() {
		t.Fatalf("err = %v, want a timeout", err)
	}
}

// TestRetryDelayAndHold: without Retry-After the first retry waits
// RetryDelay and the next twice that; a 429's Retry-After, longer than
// the client waits itself, is still recorded as HoldUntil for every user
// of the client (scheduled sync waits it out).
func TestRetryDelayAndHold(t *testing.T) {
	var mu sync.Mutex
	var at []time.Time
	retryAfter := ""
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		at = append(at, time.Now())
		ra := retryAfter
		mu.Unlock()
		if ra != "" {
			w.Header().Set("Retry-After", ra)
		}
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	defer s.Close()
	c := newClient(t, Config{URLs: []string{s.URL}, Attempts: 3, RetryDelay: 200 * time.Millisecond})
	if _, err := c.Do(context.Background(), http.MethodGet, testRepo, testPath, nil); err == nil {
		t.Fatal("429s succeeded")
	}
	mu.Lock()
	if len(at) != 3 {
		t.Fatalf("%d attempts, want 3", len(at))
	}
	// Jitter adds up to half: 200-300ms, then 400-600ms.
	if d := at[1].Sub(at[0]); d < 200*time.Millisecond || d > 900*time.Millisecond {
		t.Errorf("first retry after %s, want about 200ms", d)
	}
	if d := at[2].Sub(at[1]); d < 400*time.Millisecond {
		t.Errorf("second retry after %s, want at least 400ms", d)
	}
	at, retryAfter = nil, "120"
	mu.Unlock()
	// The last 429 held the upstream for one RetryDelay: no request goes
	// to it before that passes.
	time.Sleep(time.Until(c.HoldUntil()))

	start := time.Now()
	if _, err := c.Do(context.Background(), http.MethodGet, testRepo, testPath, nil); err == nil {
		t.Fatal("429 succeeded")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the client waited %s for a Retry-After past its cap", took)
	}
	hold := c.HoldUntil()
	if d := time.Until(hold); d < 110*time.Second || d > 121*time.Second {
		t.Errorf("HoldUntil in %s, want about 120s", d)
	}
}

// TestNoRetries: Attempts 1 sends once.
func TestNoRetries(t *testing.T) {
	var hits atomic.Int32
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer s.Close()
	c := newClient(t, Config{URLs: []string{s.URL}, Attempts: 1})
	if _, err := c.Do(context.Background(), http.MethodGet, testRepo, testPath, nil); err == nil {
		t.Fatal("503 succeeded")
	}
	if n := hits.Load(); n != 1 {
		t.Errorf("%d attempts, want 1", n)
	}
	if !c.HoldUntil().IsZero() {
		t.Error("a 503 set a hold")
	}
}
