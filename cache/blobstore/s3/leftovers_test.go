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
	// And one of another application under the same prefix (a shared
	// bucket): not this store's to abort.
	for _, key := range []string{"reg/blobs/sha256/aa/aa", "reg/blobs/sha256/bb/bb", "other/blobs/sha256/cc/cc", "reg/backup/big.tar"} {
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
		id + " data/" + id[:2] + "/" + id,
	}
	if len(got) != 4 || !slices.Equal(got[:3], want) || !strings.HasPrefix(got[3], id+" uploads/"+id+"/tail-") {
		t.Fatalf("leftovers (one a page, %d pages):\n%q\nwant %q and the session's tail", pages, got, want)
	}

	if err := s.DropLeftover(ctx(t), blobstore.Leftover{Key: "reg/backup/big.tar", Upload: "x"}); err == nil {
		t.Error("DropLeftover aborted an upload the store did not make")
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
	if !slices.Equal(uploads, []string{"reg/backup/big.tar"}) || len(objects) != 1 {
		t.Errorf("after dropping every leftover: objects %q, uploads %q; want only the committed blob and the other application's upload", objects, uploads)
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

// A commit cut off between completing the session's multipart upload (at
// data/<2 hex>/<id>) and linking it leaves that data object. Expiry, with the session's record, resumes the state the record
// holds (from before the commit) and its Cancel deletes it; without a
// record, the sweep lists it under its session.
func TestCommitCutOffBeforeCopy(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	s := newStore(t, srv, bucket, "reg/")
	cutOff := func() (state []byte, id string) {
		t.Helper()
		sess, err := s.NewSession(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sess.Append(ctx(t), 0, bytes.NewReader(randomBytes(minPartSize+100))); err != nil {
			t.Fatal(err)
		}
		if state, err = sess.State(); err != nil {
			t.Fatal(err)
		}
		// The commit's first step, then the replica dies.
		if _, err := sess.(*session).assemble(ctx(t)); err != nil {
			t.Fatal(err)
		}
		objects, uploads := srv.Keys(t, bucket, "reg/data/")
		if !slices.Contains(objects, s.dataKey(sess.ID())) || len(uploads) != 0 {
			t.Fatalf("after the completion: objects %q, uploads %q", objects, uploads)
		}
		return state, sess.ID()
	}

	state, _ := cutOff()
	resumed, err := s.ResumeSession(ctx(t), state)
	if err != nil {
		t.Fatal(err)
	}
	if err := resumed.Cancel(ctx(t)); err != nil {
		t.Fatalf("expiry's cancel of the cut-off commit: %v", err)
	}
	if objects, uploads := srv.Keys(t, bucket, "reg/"); len(objects)+len(uploads) != 0 {
		t.Errorf("after expiry's cancel: objects %q, uploads %q", objects, uploads)
	}

	_, id := cutOff()
	ls, _, err := s.Leftovers(ctx(t), "d"+cursorSep, 100)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, l := range ls {
		if l.Key == s.dataKey(id) && l.Session == id {
			found = true
			if err := s.DropLeftover(ctx(t), l); err != nil {
				t.Fatal(err)
			}
		}
	}
	if !found {
		t.Fatalf("the cut-off commit's data object is not a leftover of its session: %+v", ls)
	}
}
