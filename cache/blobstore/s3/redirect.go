package s3

import (
	"context"
	"fmt"
	"time"

	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
)

// Redirecting is the Store that also hands out presigned GET URLs of its
// blobs (blobstore.Redirector), so clients fetch the bytes from the bucket
// and the registry only answers 307. Make one with Store.Redirecting.
type Redirecting struct {
	*Store
	expiry  time.Duration
	presign *awss3.PresignClient
}

// MaxRedirectExpiry is the longest a presigned URL may live: S3 refuses
// SigV4 signatures valid for more than seven days.
const MaxRedirectExpiry = 7 * 24 * time.Hour

// Redirecting returns s with BlobURL, whose URLs are valid for expiry.
// They are signed for the endpoint s was configured with, so a client
// that follows them must reach that endpoint itself.
func (s *Store) Redirecting(expiry time.Duration) (*Redirecting, error) {
	if expiry <= 0 || expiry > MaxRedirectExpiry {
		return nil, fmt.Errorf("s3: redirect expiry %s is outside (0, %s]", expiry, MaxRedirectExpiry)
	}
	return &Redirecting{Store: s, expiry: expiry, presign: awss3.NewPresignClient(s.client)}, nil
}

// BlobURL implements blobstore.Redirector: a presigned GET of the key
// that holds d's bytes, its blob key or, for a linked blob, the data its
// link names. Signing is local, but finding the key is not: a HEAD of the
// blob key, and for a linked blob a HEAD of its data (and a GET of its
// link when it is not cached), so the URL never names data a Delete and a
// new push moved. The same HEAD tells an object lost (ErrNotFound) or cut
// to another length than size (ErrSizeMismatch): the client would get
// S3's 404 or short bytes, which only the registry can heal (a mirror
// fetches the blob again, a pushed one is pushed again). The answer
// names application/octet-stream as its type, as the registry's own
// would.
func (r *Redirecting) BlobURL(ctx context.Context, d blobstore.Digest, size int64) (string, bool, error) {
	if err := d.Validate(); err != nil {
		return "", false, err
	}
	loc, err := r.locate(ctx, d)
	if err != nil {
		return "", false, err
	}
	if size >= 0 && loc.size != size {
		return "", false, fmt.Errorf("s3: %s: %w: %d bytes stored, %d recorded", d, blobstore.ErrSizeMismatch, loc.size, size)
	}
	req, err := r.presign.PresignGetObject(ctx, &awss3.GetObjectInput{
		Bucket: &r.bucket, Key: &loc.key, ResponseContentType: ptr("application/octet-stream"),
	}, awss3.WithPresignExpires(r.expiry))
	if err != nil {
		return "", false, fmt.Errorf("s3: presign %s: %w", d, err)
	}
	return req.URL, true, nil
}

func ptr(s string) *string { return &s }

var _ blobstore.Redirector = (*Redirecting)(nil)
