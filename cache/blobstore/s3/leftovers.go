package s3

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
)

// What writes leave in the bucket when they do not finish:
//
//   - multipart uploads in progress: a session's (at uploads/<id>/data,
//     before its commit completed it), a Put's or a large commit's copy
//     (at the blob key: the key shows nothing until the upload completes,
//     but its parts are stored, and billed);
//   - objects under uploads/<id>/: a session's tail, and the data object
//     a commit completed before copying it to the blob key.
//
// Leftovers lists both, in that order: the multipart uploads under the
// whole prefix, then the objects under uploads/. The cursor says which
// listing and where in it: "m" or "o", then the key to start after.

const (
	cursorUploads = "m"
	cursorObjects = "o"
	cursorSep     = "\x00"
)

// Leftovers implements blobstore.Sweeper.
func (s *Store) Leftovers(ctx context.Context, cursor string, n int) ([]blobstore.Leftover, string, error) {
	if n <= 0 || n > 1000 {
		n = 1000 // S3's page
	}
	kind, rest, _ := strings.Cut(cursor, cursorSep)
	switch kind {
	case "", cursorUploads:
		return s.leftoverUploads(ctx, rest, n)
	case cursorObjects:
		return s.leftoverObjects(ctx, rest, n)
	}
	return nil, "", fmt.Errorf("s3: leftovers: bad cursor %q", cursor)
}

// leftoverUploads lists multipart uploads at keys after keyMarker. Only
// the key marker is used: servers differ on what an upload-ID marker
// means (versitygw 1.8 takes it for one of the next key's), while "keys
// after this one" they agree on. So that a page cut in the middle of one
// key's uploads does not skip the rest of them, the next page starts
// after the key before that one: those uploads are listed again, and
// dropping one twice does no harm.
func (s *Store) leftoverUploads(ctx context.Context, keyMarker string, n int) ([]blobstore.Leftover, string, error) {
	in := &awss3.ListMultipartUploadsInput{Bucket: &s.bucket, Prefix: &s.prefix, MaxUploads: aws.Int32(int32(n))}
	if keyMarker != "" {
		in.KeyMarker = &keyMarker
	}
	out, err := s.client.ListMultipartUploads(ctx, in)
	if err != nil {
		return nil, "", fmt.Errorf("s3: list multipart uploads: %w", err)
	}
	ls := make([]blobstore.Leftover, 0, len(out.Uploads))
	for _, u := range out.Uploads {
		key := aws.ToString(u.Key)
		if !s.ours(key) {
			continue // another application's, under the same (or no) prefix
		}
		ls = append(ls, blobstore.Leftover{
			Session: s.sessionOf(key), Since: aws.ToTime(u.Initiated),
			Key: key, Upload: aws.ToString(u.UploadId),
		})
	}
	next := cursorObjects + cursorSep
	if ups := out.Uploads; aws.ToBool(out.IsTruncated) && len(ups) > 0 {
		// The page's keys, not only those kept: a page of other
		// applications' uploads still moves the cursor.
		last := aws.ToString(ups[len(ups)-1].Key)
		after := last
		for i := len(ups) - 1; i >= 0; i-- {
			if k := aws.ToString(ups[i].Key); k != last {
				after = k
				break
			}
		}
		if after > keyMarker {
			next = cursorUploads + cursorSep + after
		} else { // one key fills the page: go past it
			next = cursorUploads + cursorSep + last
		}
	}
	return ls, next, nil
}

func (s *Store) leftoverObjects(ctx context.Context, after string, n int) ([]blobstore.Leftover, string, error) {
	prefix := s.prefix + "uploads/"
	in := &awss3.ListObjectsV2Input{Bucket: &s.bucket, Prefix: &prefix, MaxKeys: aws.Int32(int32(n))}
	if after != "" {
		in.StartAfter = &after
	}
	out, err := s.client.ListObjectsV2(ctx, in)
	if err != nil {
		return nil, "", fmt.Errorf("s3: list session objects: %w", err)
	}
	ls := make([]blobstore.Leftover, 0, len(out.Contents))
	for _, o := range out.Contents {
		key := aws.ToString(o.Key)
		ls = append(ls, blobstore.Leftover{Session: s.sessionOf(key), Since: aws.ToTime(o.LastModified), Key: key})
	}
	next := ""
	if aws.ToBool(out.IsTruncated) && len(ls) > 0 {
		next = cursorObjects + cursorSep + ls[len(ls)-1].Key
	}
	return ls, next, nil
}

// ours reports whether key is one this store writes: a session's
// (uploads/) or a blob's (blobs/). A bucket, or a prefix, may be shared
// with other applications, whose multipart uploads are theirs to finish.
func (s *Store) ours(key string) bool {
	return strings.HasPrefix(key, s.prefix+"uploads/") || strings.HasPrefix(key, s.prefix+"blobs/")
}

// sessionOf is the session a key under uploads/<id>/ belongs to, "" for
// any other key.
func (s *Store) sessionOf(key string) string {
	rest, ok := strings.CutPrefix(key, s.prefix+"uploads/")
	if !ok {
		return ""
	}
	id, _, ok := strings.Cut(rest, "/")
	if !ok {
		return ""
	}
	return id
}

// DropLeftover implements blobstore.Sweeper: it aborts the multipart
// upload, or deletes the object. Only keys under the store's prefix are
// touched, whatever l says.
func (s *Store) DropLeftover(ctx context.Context, l blobstore.Leftover) error {
	if !s.ours(l.Key) {
		return fmt.Errorf("s3: leftover %q is not under %q or %q", l.Key, s.prefix+"uploads/", s.prefix+"blobs/")
	}
	var err error
	if l.Upload != "" {
		_, err = s.client.AbortMultipartUpload(ctx, &awss3.AbortMultipartUploadInput{Bucket: &s.bucket, Key: &l.Key, UploadId: &l.Upload})
	} else {
		if l.Session == "" {
			return errors.New("s3: an object leftover belongs to a session")
		}
		_, err = s.client.DeleteObject(ctx, &awss3.DeleteObjectInput{Bucket: &s.bucket, Key: &l.Key})
	}
	if err != nil && statusOf(err) != http.StatusNotFound {
		return fmt.Errorf("s3: drop leftover %s: %w", l.Key, err)
	}
	return nil
}

var _ blobstore.Sweeper = (*Store)(nil)
