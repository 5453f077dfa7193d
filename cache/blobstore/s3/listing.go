package s3

import (
	"context"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
)

// Blobs implements blobstore.Lister: the plain blobs under blobs/, then
// the linked ones under links/ (a link is the moment a session's blob
// appears). The cursor is "b" or "l", then the key to start after.
func (s *Store) Blobs(ctx context.Context, cursor string, n int) ([]blobstore.Listed, string, error) {
	if n <= 0 || n > 1000 {
		n = 1000 // S3's page
	}
	kind, after, _ := strings.Cut(cursor, cursorSep)
	var dir, then string
	switch kind {
	case "", "b":
		kind, dir, then = "b", "blobs/", "l"+cursorSep
	case "l":
		dir = "links/"
	default:
		return nil, "", fmt.Errorf("s3: blobs: bad cursor %q", cursor)
	}
	prefix := s.prefix + dir
	in := &awss3.ListObjectsV2Input{Bucket: &s.bucket, Prefix: &prefix, MaxKeys: aws.Int32(int32(n))}
	if after != "" {
		in.StartAfter = &after
	}
	out, err := s.client.ListObjectsV2(ctx, in)
	if err != nil {
		return nil, "", fmt.Errorf("s3: list %s: %w", dir, err)
	}
	bs := make([]blobstore.Listed, 0, len(out.Contents))
	for _, o := range out.Contents {
		// <alg>/<2 hex>/<hex>; anything else there is not ours.
		parts := strings.Split(strings.TrimPrefix(aws.ToString(o.Key), prefix), "/")
		if len(parts) != 3 || len(parts[2]) < 2 || parts[1] != parts[2][:2] {
			continue
		}
		d, err := blobstore.ParseDigest(parts[0] + ":" + parts[2])
		if err != nil || d.Validate() != nil {
			continue
		}
		bs = append(bs, blobstore.Listed{Digest: d, Since: aws.ToTime(o.LastModified)})
	}
	next := then
	if aws.ToBool(out.IsTruncated) && len(out.Contents) > 0 {
		next = kind + cursorSep + aws.ToString(out.Contents[len(out.Contents)-1].Key)
	}
	return bs, next, nil
}

var _ blobstore.Lister = (*Store)(nil)
