package upstream

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"
)

// TestBlobRedirectToLinkLocalRefused: an upstream that sends a blob to
// the cloud metadata service (169.254.169.254, or any link-local,
// unspecified or multicast address) gets an error, before anything is
// sent there, even from an upstream on loopback.
func TestBlobRedirectToLinkLocalRefused(t *testing.T) {
	blob := "blobs/sha256:" + "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
	for _, to := range []string{
		"http://169.254.169.254/latest/meta-data/iam/security-credentials/",
		"http://[fe80::1]/blob",
		"http://0.0.0.0:1/blob",
		"http://[::ffff:169.254.169.254]/blob",
	} {
		t.Run(to, func(t *testing.T) {
			reg := newRedirectingRegistry(t, false, func(*http.Request) string { return to })
			c := newClient(t, Config{URLs: []string{reg.URL}, Username: "bob", Password: "pw", Attempts: 1})
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			resp, err := c.Do(ctx, http.MethodGet, testRepo, blob, nil)
			if err == nil {
				resp.Body.Close()
				t.Fatalf("Do followed a redirect to %s", to)
			}
			if !errors.Is(err, errInternalAddress) {
				t.Fatalf("Do: %v, want the redirect refused as internal", err)
			}
		})
	}
}

// TestRedirectTargetRule: loopback and private addresses are reachable by
// a redirect only from an upstream that lives there too (a registry with
// its storage on one private network); a public upstream cannot point the
// mirror at them.
func TestRedirectTargetRule(t *testing.T) {
	tests := []struct {
		origin, target string
		ok             bool
	}{
		{"https://203.0.113.5", "https://198.51.100.7/blob", true},
		{"https://203.0.113.5", "http://127.0.0.1:8080/blob", false},
		{"https://203.0.113.5", "http://10.0.0.5/blob", false},
		{"https://203.0.113.5", "http://[::1]/blob", false},
		{"https://203.0.113.5", "http://192.168.1.1/blob", false},
		{"https://203.0.113.5", "http://localhost/blob", false},
		{"http://10.0.0.2:5000", "http://10.0.0.5:9000/blob", true},
		{"http://127.0.0.1:5000", "http://localhost:9000/blob", true},
		{"http://10.0.0.2:5000", "http://169.254.169.254/blob", false},
		{"http://127.0.0.1:5000", "https://203.0.113.9/blob", true},
	}
	for _, tt := range tests {
		o, _ := url.Parse(tt.origin)
		tg, _ := url.Parse(tt.target)
		err := checkTarget(context.Background(), net.DefaultResolver, tg, o)
		if (err == nil) != tt.ok {
			t.Errorf("from %s to %s: %v, want allowed %v", tt.origin, tt.target, err, tt.ok)
		}
	}
}
