package s3

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go/middleware"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
)

// countGets is s's client again, counting GetObject and HeadObject calls.
func countGets(s *Store, gets, heads *int) *awss3.Client {
	opts := s.client.Options()
	opts.APIOptions = append(opts.APIOptions, func(st *middleware.Stack) error {
		return st.Initialize.Add(middleware.InitializeMiddlewareFunc("countGets",
			func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
				switch middleware.GetOperationName(ctx) {
				case "GetObject":
					*gets++
				case "HeadObject":
					*heads++
				}
				return next.HandleInitialize(ctx, in)
			}), middleware.Before)
	})
	return awss3.New(opts)
}

// TestOpenRecorded: a blob opened with its recorded size costs no request
// until it is read, and then one GET, also when http.ServeContent seeks to
// the end and back first. An object of another size than the record's,
// or none at all, fails the first Read.
func TestOpenRecorded(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	s := newStore(t, srv, bucket, "")
	c := randomBytes(2<<20 + 9)
	d := blobstore.FromBytes(blobstore.SHA256, c)
	if _, err := s.Put(ctx(t), d, int64(len(c)), bytes.NewReader(c)); err != nil {
		t.Fatal(err)
	}
	var gets, heads int
	s.client = countGets(s, &gets, &heads)

	b, err := s.OpenRecorded(ctx(t), d, int64(len(c)))
	if err != nil {
		t.Fatal(err)
	}
	if gets+heads != 0 {
		t.Fatalf("OpenRecorded sent %d GET, %d HEAD before a Read", gets, heads)
	}
	rec := httptest.NewRecorder()
	rec.Header().Set("Content-Type", "application/octet-stream") // as the registry does: no sniffing
	http.ServeContent(rec, httptest.NewRequest(http.MethodGet, "/", nil), "", time.Time{}, b)
	b.Close()
	if rec.Code != http.StatusOK || !bytes.Equal(rec.Body.Bytes(), c) {
		t.Fatalf("ServeContent: %d, %d bytes", rec.Code, rec.Body.Len())
	}
	if gets != 1 || heads != 0 {
		t.Fatalf("ServeContent of a recorded blob: %d GET, %d HEAD; want 1 GET", gets, heads)
	}

	for _, size := range []int64{int64(len(c)) - 1, int64(len(c)) + 1} {
		b, err := s.OpenRecorded(ctx(t), d, size)
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.Copy(io.Discard, b)
		b.Close()
		if !errors.Is(err, blobstore.ErrSizeMismatch) {
			t.Errorf("read with a recorded size of %d for %d bytes: %v, want ErrSizeMismatch", size, len(c), err)
		}
	}
	missing := blobstore.FromBytes(blobstore.SHA256, []byte("never stored"))
	b, err = s.OpenRecorded(ctx(t), missing, 12)
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.Read(make([]byte, 12))
	b.Close()
	if !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("read of a recorded blob S3 does not hold: %v, want ErrNotFound", err)
	}
}
