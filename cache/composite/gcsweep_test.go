package composite

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/cache/metastore"
)

// s3Cluster is two replicas on a versitygw bucket (prefix registry/) and
// one PostgreSQL database, sharing a clock, with the server at hand for
// what a test does behind their back.
type s3Cluster struct {
	srv    *s3test.Server
	bucket string
	a, b   *Store
	clock  *clock
}

func newS3Cluster(t *testing.T) *s3Cluster {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	meta := pgMeta(t)
	c := &s3Cluster{srv: srv, bucket: bucket, clock: &clock{t: time.Now()}}
	replica := func() *Store {
		blobs := newS3Blobs(t, srv, bucket)
		m, l := meta()
		s, err := New(Options{Blobs: blobs, Meta: m, Leases: l})
		if err != nil {
			t.Fatal(err)
		}
		s.now = c.clock.now
		return s
	}
	c.a, c.b = replica(), replica()
	return c
}

// orphanUpload starts a multipart upload at key with one part, as a
// replica killed right after it would leave it.
func (c *s3Cluster) orphanUpload(t *testing.T, key string) {
	t.Helper()
	cl := c.srv.Client()
	up, err := cl.CreateMultipartUpload(ctx(t), &awss3.CreateMultipartUploadInput{Bucket: &c.bucket, Key: &key})
	if err != nil {
		t.Fatal(err)
	}
	part := randomBytes(1000)
	if _, err := cl.UploadPart(ctx(t), &awss3.UploadPartInput{
		Bucket: &c.bucket, Key: &key, UploadId: up.UploadId, PartNumber: aws.Int32(1),
		Body: bytes.NewReader(part), ContentLength: aws.Int64(int64(len(part))),
	}); err != nil {
		t.Fatal(err)
	}
}

// keys is what the bucket holds under registry/uploads/ (objects) and
// every multipart upload in progress, sorted.
func (c *s3Cluster) keys(t *testing.T) (objects, uploads []string) {
	t.Helper()
	objects, _ = c.srv.Keys(t, c.bucket, "registry/uploads/")
	_, uploads = c.srv.Keys(t, c.bucket, "registry/")
	slices.Sort(objects)
	slices.Sort(uploads)
	return objects, uploads
}

// The GC leader aborts the multipart uploads and deletes the session
// objects that no session record refers to, once older than the upload
// TTL: a session-shaped upload whose record was never written, a Put cut
// off at a blob key, a commit's data object left after its record went,
// and the bytes of a session whose record was deleted while S3 could not
// free them. A live session's upload and tail, and anything younger, are
// untouched, and the live session still commits.
func TestGCSweepsOrphanUploads(t *testing.T) {
	c := newS3Cluster(t)
	a, b := c.a, c.b

	// A session whose record went while its bytes stayed (the old
	// expiry, S3 down): a part and a tail in the bucket, no record.
	gone, err := a.OpenUpload(ctx(t), "team/app", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.AppendUpload(ctx(t), "team/app", gone.ID, 0, bytes.NewReader(randomBytes(5<<20+10))); err != nil {
		t.Fatal(err)
	}
	if err := a.meta.DeleteUpload(ctx(t), gone.ID); err != nil {
		t.Fatal(err)
	}
	c.orphanUpload(t, "registry/uploads/0123456789abcdef0123456789abcdef/data")
	c.orphanUpload(t, "registry/blobs/sha256/ab/"+strings.Repeat("ab", 32))
	c.srv.Put(t, c.bucket, "registry/uploads/fedcba9876543210fedcba9876543210/data", randomBytes(100))
	// A blob a session committed (a link and its data), which no
	// leftover sweep may touch, and one whose Delete was cut off after
	// its link went: its data is an orphan.
	commit := func() (blobstore.Digest, string) {
		sess, err := a.blobs.NewSession(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		c := randomBytes(5<<20 + 30)
		if _, err := sess.Append(ctx(t), 0, bytes.NewReader(c)); err != nil {
			t.Fatal(err)
		}
		d := blobstore.FromBytes(blobstore.SHA256, c)
		if _, err := sess.Commit(ctx(t), d, -1); err != nil {
			t.Fatal(err)
		}
		return d, sess.ID()
	}
	linked, linkedID := commit()
	orphan, _ := commit()
	c.srv.Delete(t, c.bucket, "registry/links/sha256/"+orphan.Hex[:2]+"/"+orphan.Hex)
	linkedKeys := []string{
		"registry/data/" + linkedID[:2] + "/" + linkedID,
		"registry/data/" + linkedID[:2] + "/" + linkedID + ".sha256." + linked.Hex,
	}
	if data, _ := c.srv.Keys(t, c.bucket, "registry/data/"); len(data) != 4 {
		t.Fatalf("set-up: data objects %q", data)
	}
	objects, uploads := c.keys(t)
	if len(objects) != 2 || len(uploads) != 3 {
		t.Fatalf("set-up: objects %q, uploads %q", objects, uploads)
	}

	// Younger than the TTL: nothing goes.
	if _, err := b.GC(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if o, u := c.keys(t); !slices.Equal(o, objects) || !slices.Equal(u, uploads) {
		t.Fatalf("GC inside the TTL freed leftovers: objects %q, uploads %q", o, u)
	}

	c.clock.add(25 * time.Hour)
	// A live session, opened now (as the clock goes): its upload is as
	// old as the orphans in S3's eyes, but its record holds it.
	live, err := a.OpenUpload(ctx(t), "team/app", "")
	if err != nil {
		t.Fatal(err)
	}
	data := randomBytes(5<<20 + 20)
	if _, err := a.AppendUpload(ctx(t), "team/app", live.ID, 0, bytes.NewReader(data[:5<<20+10])); err != nil {
		t.Fatal(err)
	}
	if _, err := b.GC(ctx(t)); err != nil {
		t.Fatal(err)
	}
	objects, uploads = c.keys(t)
	if data, _ := c.srv.Keys(t, c.bucket, "registry/data/"); !slices.Equal(data, linkedKeys) {
		t.Errorf("data objects after GC: %q, want only the linked blob's %q", data, linkedKeys)
	}
	if _, err := a.blobs.Stat(ctx(t), linked); err != nil {
		t.Errorf("the linked blob after GC: %v", err)
	}
	if len(uploads) != 1 || uploads[0] != "registry/data/"+live.ID[:2]+"/"+live.ID {
		t.Errorf("multipart uploads after GC: %q, want only the live session's", uploads)
	}
	if len(objects) != 1 || !strings.HasPrefix(objects[0], "registry/uploads/"+live.ID+"/tail-") {
		t.Errorf("session objects after GC: %q, want only the live session's tail", objects)
	}
	if _, err := a.AppendUpload(ctx(t), "team/app", live.ID, 5<<20+10, bytes.NewReader(data[5<<20+10:])); err != nil {
		t.Fatal(err)
	}
	d := cache.FromBytes(cache.SHA256, data)
	if _, err := b.CommitUpload(ctx(t), "team/app", live.ID, d); err != nil {
		t.Fatalf("commit of the live session after GC: %v", err)
	}
	if !bytes.Equal(readBlob(t, a, d), data) {
		t.Fatal("the live session's blob is not its bytes")
	}
	if o, u := c.keys(t); len(o)+len(u) != 0 {
		t.Errorf("after the commit: objects %q, uploads %q", o, u)
	}
}

// S3 down while GC expires a session: its record stays, so the next pass
// (S3 back) frees its bytes and then forgets it; nothing is left in the
// bucket.
func TestGCExpiryRetriesWhenS3IsDown(t *testing.T) {
	c := newS3Cluster(t)
	a, b := c.a, c.b
	u, err := a.OpenUpload(ctx(t), "team/app", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.AppendUpload(ctx(t), "team/app", u.ID, 0, bytes.NewReader(randomBytes(5<<20+10))); err != nil {
		t.Fatal(err)
	}
	c.clock.add(25 * time.Hour)

	c.srv.Kill()
	st, err := b.GC(ctx(t))
	t.Logf("GC with S3 down: %+v, %v", st, err)
	if st.UploadsExpired != 0 {
		t.Errorf("GC with S3 down counted %d sessions expired", st.UploadsExpired)
	}
	if _, err := b.meta.Upload(ctx(t), u.ID); err != nil {
		t.Fatalf("the session's record after GC with S3 down: %v, want kept for the next pass", err)
	}
	c.srv.Restart(t)
	if st, err = b.GC(ctx(t)); err != nil || st.UploadsExpired != 1 {
		t.Fatalf("GC with S3 back: %+v, %v; want the session expired", st, err)
	}
	if _, err := b.meta.Upload(ctx(t), u.ID); !errors.Is(err, metastore.ErrUploadUnknown) {
		t.Errorf("the session's record after expiry: %v", err)
	}
	if o, up := c.keys(t); len(o)+len(up) != 0 {
		t.Errorf("left in the bucket: objects %q, uploads %q", o, up)
	}
}

// sessionsLeft lists the sessions the blob store holds bytes of.
func sessionsLeft(t *testing.T, s *Store) []string {
	t.Helper()
	sw := s.blobs.(blobstore.Sweeper)
	var ids []string
	cursor := ""
	for {
		ls, next, err := sw.Leftovers(ctx(t), cursor, 100)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range ls {
			if !slices.Contains(ids, l.Session) {
				ids = append(ids, l.Session)
			}
		}
		if next == "" {
			slices.Sort(ids)
			return ids
		}
		cursor = next
	}
}

// On every backend: a session the blob store began but no record names
// (a replica killed between the two) is freed by GC once older than the
// upload TTL; a live session is not.
func TestGCSweepsUnrecordedSessions(t *testing.T) {
	each(t, func(t *testing.T, replica replicas) {
		c := &clock{t: time.Now()}
		a, b := replica(), replica()
		a.now, b.now = c.now, c.now
		sess, err := a.blobs.NewSession(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sess.Append(ctx(t), 0, bytes.NewReader(randomBytes(5<<20+10))); err != nil {
			t.Fatal(err)
		}
		if _, err := b.GC(ctx(t)); err != nil {
			t.Fatal(err)
		}
		if got := sessionsLeft(t, a); !slices.Equal(got, []string{sess.ID()}) {
			t.Fatalf("inside the TTL, GC left the sessions %q; want the unrecorded one", got)
		}
		c.add(25 * time.Hour)
		live, err := a.OpenUpload(ctx(t), "team/app", "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.AppendUpload(ctx(t), "team/app", live.ID, 0, bytes.NewReader(randomBytes(100))); err != nil {
			t.Fatal(err)
		}
		if _, err := b.GC(ctx(t)); err != nil {
			t.Fatal(err)
		}
		if got := sessionsLeft(t, a); !slices.Equal(got, []string{live.ID}) {
			t.Errorf("past the TTL, GC left the sessions %q; want only the live one", got)
		}
	})
}

// With a short upload TTL and grace period, a session's leftover goes
// once older than both, but a multipart upload at a blob key (a Put of a
// huge blob, no session to bound it) is given putMaxAge.
func TestGCSweepShortTTL(t *testing.T) {
	c := newS3Cluster(t)
	a, b := c.a, c.b
	b.ttl, b.grace = time.Hour, time.Hour
	sess, err := a.blobs.NewSession(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Append(ctx(t), 0, bytes.NewReader(randomBytes(5<<20+10))); err != nil {
		t.Fatal(err)
	}
	put := "registry/blobs/sha256/cd/" + strings.Repeat("cd", 32)
	c.orphanUpload(t, put)
	c.clock.add(2 * time.Hour)
	if _, err := b.GC(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if objects, uploads := c.keys(t); len(objects) != 0 || !slices.Equal(uploads, []string{put}) {
		t.Errorf("after GC past the TTL: objects %q, uploads %q; want only the Put's upload", objects, uploads)
	}
	c.clock.add(putMaxAge)
	if _, err := b.GC(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if objects, uploads := c.keys(t); len(objects)+len(uploads) != 0 {
		t.Errorf("after GC past putMaxAge: objects %q, uploads %q", objects, uploads)
	}
}

// TestGCDeletesFencedOnS3: GC's deletes of blobs' bytes go to S3 fenced by
// the GC lease's deadline (presigned, expiring before it) and still
// delete: an unlinked blob's bytes are gone from the bucket after the
// passes that mark and sweep it.
func TestGCDeletesFencedOnS3(t *testing.T) {
	c := newS3Cluster(t)
	b := randomBytes(5000)
	d := cache.FromBytes(cache.SHA256, b)
	if _, err := c.a.PutBlob(ctx(t), d, int64(len(b)), bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
	key := "registry/blobs/sha256/" + d.Hex[:2] + "/" + d.Hex
	if objects, _ := c.srv.Keys(t, c.bucket, key); len(objects) != 1 {
		t.Fatalf("after the push the bucket holds %v", objects)
	}
	c.clock.add(2 * time.Hour)
	removed := 0
	for range 3 {
		st, err := c.a.GC(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		removed += st.BlobsRemoved
	}
	if objects, _ := c.srv.Keys(t, c.bucket, key); len(objects) != 0 || removed != 1 {
		t.Fatalf("after GC the bucket holds %v (blobs removed %d)", objects, removed)
	}
}
