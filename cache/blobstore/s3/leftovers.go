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
	"github.com/caddy-oci/caddy-oci/cache/blobstore/internal/backend"
)

// What writes leave in the bucket when they do not finish:
//
//   - multipart uploads in progress: a session's (at data/<2 hex>/<id>,
//     before its commit completed it), a Put's (at the blob key: the key
//     shows nothing until the upload completes, but its parts are stored,
//     and billed), and sessions' of before data/ (at uploads/<id>/data);
//   - objects under uploads/<id>/: a session's tail (and, from before
//     data/, the data object a commit completed before copying it);
//   - data objects no link names: a commit cut off between completing the
//     data and linking it, a Delete cut off between the link and the data,
//     a session whose commit failed verification after assembling.
//
// Leftovers lists them in that order: the multipart uploads under the
// whole prefix, the objects under uploads/, the data objects under data/
// that no link names. The cursor says which listing and where in it: "m",
// "o" or "d", then the key to start after.

const (
	cursorUploads = "m"
	cursorObjects = "o"
	cursorData    = "d"
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
	case cursorData:
		return s.leftoverData(ctx, rest, n)
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
	next := cursorData + cursorSep
	if aws.ToBool(out.IsTruncated) && len(ls) > 0 {
		next = cursorObjects + cursorSep + ls[len(ls)-1].Key
	}
	return ls, next, nil
}

// leftoverData lists the data objects under data/ after the key after
// that no link names. A data object's markers follow it in the listing;
// when a page ends on one, the rest of its markers may be on the next
// page, so that one is listed again by itself. Markers whose data object
// is not on the page are passed over: the page before saw it.
//
// Deciding costs a GET of a link per linked data object: GC's background
// work, a page at a time. Not from the cache: a Delete cut off between the
// link and the data leaves the link cached on replicas that read it, and
// those keep serving the data until this sweep frees it (the window is
// the grace period, and only after a Delete that failed).
func (s *Store) leftoverData(ctx context.Context, after string, n int) ([]blobstore.Leftover, string, error) {
	prefix := s.prefix + "data/"
	in := &awss3.ListObjectsV2Input{Bucket: &s.bucket, Prefix: &prefix, MaxKeys: aws.Int32(int32(n))}
	if after != "" {
		in.StartAfter = &after
	}
	out, err := s.client.ListObjectsV2(ctx, in)
	if err != nil {
		return nil, "", fmt.Errorf("s3: list data objects: %w", err)
	}
	truncated := aws.ToBool(out.IsTruncated)
	var ls []blobstore.Leftover
	objs := out.Contents
	for i := 0; i < len(objs); i++ {
		key := aws.ToString(objs[i].Key)
		id, ok := s.dataID(key)
		if !ok {
			continue // a marker, or not ours
		}
		since := aws.ToTime(objs[i].LastModified)
		var markers []blobstore.Digest
		j := i + 1
		for ; j < len(objs); j++ {
			d, ok := s.markerDigest(id, aws.ToString(objs[j].Key))
			if !ok {
				break
			}
			markers = append(markers, d)
		}
		if j == len(objs) && truncated {
			if markers, err = s.markersOf(ctx, id); err != nil {
				return nil, "", err
			}
		}
		i = j - 1
		linked := false
		for _, d := range markers {
			if linked, err = s.names(ctx, d, id); err != nil {
				return nil, "", fmt.Errorf("s3: list data objects: %w", err)
			}
			if linked {
				break
			}
		}
		if !linked {
			ls = append(ls, blobstore.Leftover{Session: id, Since: since, Key: key})
		}
	}
	next := ""
	if truncated && len(objs) > 0 {
		next = cursorData + cursorSep + aws.ToString(objs[len(objs)-1].Key)
	}
	return ls, next, nil
}

// markersOf lists the markers of session id's data.
func (s *Store) markersOf(ctx context.Context, id string) ([]blobstore.Digest, error) {
	prefix := s.dataKey(id) + "."
	var ds []blobstore.Digest
	pages := awss3.NewListObjectsV2Paginator(s.client, &awss3.ListObjectsV2Input{Bucket: &s.bucket, Prefix: &prefix})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("s3: list markers of %s: %w", id, err)
		}
		for _, o := range page.Contents {
			if d, ok := s.markerDigest(id, aws.ToString(o.Key)); ok {
				ds = append(ds, d)
			}
		}
	}
	return ds, nil
}

// dataID is the session whose data object key is, if it is one.
func (s *Store) dataID(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, s.prefix+"data/")
	if !ok || len(rest) < 3 || rest[2] != '/' {
		return "", false
	}
	id := rest[3:]
	return id, backend.IsID(id) && id[:2] == rest[:2]
}

// ours reports whether key is one this store writes leftovers at: a
// session's (uploads/, data/) or a blob's (blobs/). A bucket, or a
// prefix, may be shared with other applications, whose multipart uploads
// are theirs to finish.
func (s *Store) ours(key string) bool {
	for _, p := range []string{"uploads/", "data/", "blobs/"} {
		if strings.HasPrefix(key, s.prefix+p) {
			return true
		}
	}
	return false
}

// sessionOf is the session a key under uploads/<id>/ or a data object
// belongs to, "" for any other key.
func (s *Store) sessionOf(key string) string {
	if id, ok := s.dataID(key); ok {
		return id
	}
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
// upload, or deletes the object; a data object only if, read again now,
// no link names it (releaseData). Only keys under the store's prefix are
// touched, whatever l says.
func (s *Store) DropLeftover(ctx context.Context, l blobstore.Leftover) error {
	if !s.ours(l.Key) {
		return fmt.Errorf("s3: leftover %q is not under %q, %q or %q", l.Key, s.prefix+"uploads/", s.prefix+"data/", s.prefix+"blobs/")
	}
	var err error
	if id, ok := s.dataID(l.Key); ok && l.Upload == "" {
		err = s.releaseData(ctx, id)
	} else if l.Upload != "" {
		_, err = s.client.AbortMultipartUpload(ctx, &awss3.AbortMultipartUploadInput{Bucket: &s.bucket, Key: &l.Key, UploadId: &l.Upload})
	} else {
		if l.Session == "" || !strings.HasPrefix(l.Key, s.prefix+"uploads/") {
			return errors.New("s3: an object leftover is a session's, under uploads/ or a data object")
		}
		_, err = s.client.DeleteObject(ctx, &awss3.DeleteObjectInput{Bucket: &s.bucket, Key: &l.Key})
	}
	if err != nil && statusOf(err) != http.StatusNotFound {
		return fmt.Errorf("s3: drop leftover %s: %w", l.Key, err)
	}
	return nil
}

var _ blobstore.Sweeper = (*Store)(nil)
