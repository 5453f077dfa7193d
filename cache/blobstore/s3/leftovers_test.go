package s3

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
)

// Leftovers lists, a page at a time, the multipart uploads under the
// prefix (a session's and a cut-off Put's) and the objects of sessions,
// each with its session and age; DropLeftover frees each; nothing outside
// the prefix is listed or touched, and a committed blob is never listed.
func TestLeftovers(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	s := newStore(t, srv, bucket, "reg/")
	start := time.Now().Add(-time.Minute)

	// A session with a part and a tail: a multipart upload and an object.
	sess, err := s.NewSession(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Append(ctx(t), 0, bytes.NewReader(randomBytes(minPartSize+100))); err != nil {
		t.Fatal(err)
	}
	// Two cut-off Puts (a crashed replica) and one under another prefix.
	for _, key := range []string{"reg/blobs/sha256/aa/aa", "reg/blobs/sha256/bb/bb", "other/blobs/sha256/cc/cc"} {
		if _, err := srv.Client().CreateMultipartUpload(ctx(t), &awss3.CreateMultipartUploadInput{Bucket: &bucket, Key: aws.String(key)}); err != nil {
			t.Fatal(err)
		}
	}
	// A committed blob and another prefix's session object: not listed.
	committed := []byte("committed")
	if _, err := s.Put(ctx(t), blobstore.FromBytes(blobstore.SHA256, committed), -1, bytes.NewReader(committed)); err != nil {
		t.Fatal(err)
	}
	srv.Put(t, bucket, "other/uploads/x/tail-y", []byte("other"))

	var all []blobstore.Leftover
	cursor, pages := "", 0
	for {
		ls, next, err := s.Leftovers(ctx(t), cursor, 1)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, ls...)
		pages++
		if next == "" {
			break
		}
		if pages > 20 {
			t.Fatalf("the listing does not end: cursor %q", next)
		}
		cursor = next
	}
	var got []string
	for _, l := range all {
		if l.Since.Before(start) || l.Since.After(time.Now().Add(time.Minute)) {
			t.Errorf("leftover %s: since %v, not when it was made", l.Key, l.Since)
		}
		got = append(got, l.Session+" "+strings.TrimPrefix(l.Key, "reg/"))
	}
	slices.Sort(got)
	id := sess.ID()
	want := []string{
		" blobs/sha256/aa/aa", " blobs/sha256/bb/bb",
		id + " uploads/" + id + "/data",
	}
	if len(got) != 4 || !slices.Equal(got[:3], want) || !strings.HasPrefix(got[3], id+" uploads/"+id+"/tail-") {
		t.Fatalf("leftovers (one a page, %d pages):\n%q\nwant %q and the session's tail", pages, got, want)
	}

	for _, l := range all {
		if err := s.DropLeftover(ctx(t), l); err != nil {
			t.Fatal(err)
		}
		if err := s.DropLeftover(ctx(t), l); err != nil {
			t.Errorf("dropping %s again: %v", l.Key, err)
		}
	}
	objects, uploads := srv.Keys(t, bucket, "reg/")
	if len(uploads) != 0 || len(objects) != 1 {
		t.Errorf("after dropping every leftover: objects %q, uploads %q; want only the committed blob", objects, uploads)
	}
	if _, uploads := srv.Keys(t, bucket, "other/"); len(uploads) != 1 {
		t.Errorf("another prefix's upload: %q", uploads)
	}
	for _, l := range []blobstore.Leftover{
		{Key: "other/uploads/x/tail-y", Session: "x"},
		{Key: "reg/blobs/sha256/aa/aa"}, // an object, not an upload: a blob
		{Key: ""},
	} {
		if err := s.DropLeftover(ctx(t), l); err == nil {
			t.Errorf("DropLeftover(%+v) accepted", l)
		}
	}
	if objects, _ := srv.Keys(t, bucket, "other/uploads/"); len(objects) != 1 {
		t.Errorf("another prefix's object: %q", objects)
	}
}
