package s3

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
)

// TestRetriesAfterManyFailures: after a long run of failures (a flaky
// network, an S3 outage: 60 calls failing every attempt, 120 retries), a call whose
// first attempt fails is still tried again once S3 answers. The SDK's
// default retryer spends a token bucket on retries and, once it is
// empty, fails a call at its first error ("retry quota exceeded") until
// successes fill it again: a replica answered 503 to requests after the
// network was well (seen in e2e TestReplicaNetworkCuts).
func TestRetriesAfterManyFailures(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	direct := newStore(t, srv, bucket, "")
	c := []byte("a blob stat after an outage")
	d := blobstore.FromBytes(blobstore.SHA256, c)
	if _, err := direct.Put(ctx(t), d, int64(len(c)), bytes.NewReader(c)); err != nil {
		t.Fatal(err)
	}
	target, _ := url.Parse(srv.Endpoint)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var mode atomic.Int32 // 0: every request fails; 1: every other one
	var n atomic.Int64
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if mode.Load() == 0 || n.Add(1)%2 == 1 {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code><Message>try again</Message></Error>`)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	defer front.Close()
	s, err := New(context.Background(), Config{
		Bucket: bucket, Endpoint: front.URL, Region: srv.Region,
		AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true, PartSize: minPartSize,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 60 {
		if _, err := s.Stat(ctx(t), d); err == nil {
			t.Fatal("a Stat succeeded while every request failed")
		}
	}
	mode.Store(1)
	for i := range 5 {
		if _, err := s.Stat(ctx(t), d); err != nil {
			t.Fatalf("Stat %d once S3 answers again (its first attempt failing): %v", i, err)
		}
	}
}
