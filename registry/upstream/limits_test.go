package upstream

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
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
