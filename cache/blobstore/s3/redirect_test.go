package s3

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
)

// TestRedirecting: BlobURL signs a GET of the blob's key on the
// configured endpoint that works without credentials, for the expiry
// asked; expiries S3 would refuse are refused up front.
func TestRedirecting(t *testing.T) {
	srv := s3test.Start(t)
	s := newStore(t, srv, srv.Bucket(t), "reg/")
	for _, bad := range []time.Duration{0, -time.Minute, MaxRedirectExpiry + time.Second} {
		if _, err := s.Redirecting(bad); err == nil {
			t.Errorf("Redirecting(%s) succeeded", bad)
		}
	}
	r, err := s.Redirecting(90 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := randomBytes(1000)
	d := blobstore.FromBytes(blobstore.SHA256, c)
	if _, err := r.Put(ctx(t), d, int64(len(c)), bytes.NewReader(c)); err != nil {
		t.Fatal(err)
	}
	u, ok, err := r.BlobURL(ctx(t), d, int64(len(c)))
	if err != nil || !ok {
		t.Fatalf("BlobURL: %q, %v, %v", u, ok, err)
	}
	if !strings.HasPrefix(u, srv.Endpoint+"/") || !strings.Contains(u, "/reg/blobs/sha256/"+d.Hex[:2]+"/"+d.Hex+"?") || !strings.Contains(u, "X-Amz-Expires=90") {
		t.Fatalf("URL %q: want the blob's key on %s, valid 90s", u, srv.Endpoint)
	}
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, c) || resp.Header.Get("Content-Type") != "application/octet-stream" {
		t.Fatalf("GET of the URL: %s, %q, %d bytes", resp.Status, resp.Header.Get("Content-Type"), len(body))
	}
	if _, _, err := r.BlobURL(ctx(t), blobstore.Digest{Algorithm: blobstore.SHA256, Hex: "../../x"}, -1); err == nil {
		t.Error("BlobURL of an invalid digest succeeded")
	}
	// The Store itself does not redirect.
	var plain any = s
	if _, ok := plain.(blobstore.Redirector); ok {
		t.Error("a Store without Redirecting offers BlobURL")
	}
}

// TestRedirectLostBlob: a blob whose object S3 lost, or holds at another
// length than the caller's record, gets no URL (which would answer 404
// or short bytes) but the loss, which the registry heals; its HEAD is
// the one a URL costs anyway.
func TestRedirectLostBlob(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	s := newStore(t, srv, bucket, "reg/")
	r, err := s.Redirecting(time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	c := randomBytes(1000)
	d := blobstore.FromBytes(blobstore.SHA256, c)
	if _, err := r.Put(ctx(t), d, int64(len(c)), bytes.NewReader(c)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.BlobURL(ctx(t), d, int64(len(c))+1); !errors.Is(err, blobstore.ErrSizeMismatch) {
		t.Fatalf("BlobURL of a blob recorded 1 byte longer: %v, want ErrSizeMismatch", err)
	}
	if u, ok, err := r.BlobURL(ctx(t), d, -1); err != nil || !ok || u == "" {
		t.Fatalf("BlobURL of a blob of no recorded size: %q, %v, %v", u, ok, err)
	}
	srv.Delete(t, bucket, s.blobKey(d))
	if u, _, err := r.BlobURL(ctx(t), d, int64(len(c))); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("BlobURL of a blob S3 lost: %q, %v, want ErrNotFound", u, err)
	}
}
