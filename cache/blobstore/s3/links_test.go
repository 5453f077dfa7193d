package s3

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
)

// pushSession pushes c through a session in two chunks, so it has a part
// and a tail, and commits it; it returns the digest and the session.
func pushSession(t *testing.T, s *Store, c []byte, alg blobstore.Algorithm) (blobstore.Digest, blobstore.Session) {
	t.Helper()
	d := blobstore.FromBytes(alg, c)
	sess, err := s.NewSession(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	half := len(c) / 2
	if _, err := sess.Append(ctx(t), 0, bytes.NewReader(c[:half])); err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Append(ctx(t), int64(half), bytes.NewReader(c[half:])); err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Commit(ctx(t), d, int64(len(c))); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	return d, sess
}

// readAll reads d whole through Open and through OpenRange.
func readAll(t *testing.T, s *Store, d blobstore.Digest) ([]byte, error) {
	t.Helper()
	b, err := s.Open(ctx(t), d)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	got, err := io.ReadAll(b)
	if err != nil {
		return nil, err
	}
	rc, err := s.OpenRange(ctx(t), d, 1, int64(len(got)-1))
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	rest, err := io.ReadAll(rc)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(rest, got[1:]) {
		return nil, fmt.Errorf("OpenRange(1, %d) is not Open's bytes", len(got)-1)
	}
	// And as package composite reads it: opened from the recorded size,
	// not knowing whether the blob is plain or linked.
	rb, err := s.OpenRecorded(ctx(t), d, int64(len(got)))
	if err != nil {
		return nil, err
	}
	defer rb.Close()
	recorded, err := io.ReadAll(rb)
	if err != nil {
		return nil, fmt.Errorf("OpenRecorded: %w", err)
	}
	if !bytes.Equal(recorded, got) {
		return nil, errors.New("OpenRecorded's bytes are not Open's")
	}
	return got, nil
}

func (s *Store) objectKeys(t *testing.T, srv *s3test.Server, bucket string) []string {
	t.Helper()
	objects, uploads := srv.Keys(t, bucket, s.prefix)
	if len(uploads) != 0 {
		t.Errorf("multipart uploads in progress: %q", uploads)
	}
	slices.Sort(objects)
	return objects
}

// A session's blob (sha256 and sha512) is a data object, a marker and a
// link, no blob key; every replica reads it, and after a Delete the
// bucket holds nothing of it.
func TestLinkedBlob(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	a, b := newStore(t, srv, bucket, "reg/"), newStore(t, srv, bucket, "reg/")
	for _, alg := range []blobstore.Algorithm{blobstore.SHA256, blobstore.SHA512} {
		c := randomBytes(minPartSize + 1000)
		d, sess := pushSession(t, a, c, alg)
		id := sess.ID()
		want := []string{a.dataKey(id), a.markerKey(id, d), a.linkKey(d)}
		if got := a.objectKeys(t, srv, bucket); !slices.Equal(got, want) {
			t.Fatalf("%s: bucket %q, want %q", alg, got, want)
		}
		for _, s := range []*Store{a, b} {
			if info, err := s.Stat(ctx(t), d); err != nil || info.Size != int64(len(c)) {
				t.Fatalf("%s: Stat: %+v, %v", alg, info, err)
			}
			if got, err := readAll(t, s, d); err != nil || !bytes.Equal(got, c) {
				t.Fatalf("%s: read: %v", alg, err)
			}
		}
		if err := b.Delete(ctx(t), d); err != nil {
			t.Fatal(err)
		}
		for _, s := range []*Store{a, b} { // a has it cached
			if _, err := s.Stat(ctx(t), d); !errors.Is(err, blobstore.ErrNotFound) {
				t.Fatalf("%s: Stat after Delete: %v", alg, err)
			}
		}
		if got := a.objectKeys(t, srv, bucket); len(got) != 0 {
			t.Fatalf("%s: bucket after Delete: %q", alg, got)
		}
	}
}

// Data deleted from under its link (a crash, an operator, a bug): every
// read answers ErrNotFound, on the replica that had the link cached and
// on one that had not, never garbage or another error; and a push of the
// same digest replaces the dangling link.
func TestDataGoneUnderLink(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	a, b := newStore(t, srv, bucket, "reg/"), newStore(t, srv, bucket, "reg/")
	c := randomBytes(minPartSize + 1000)
	d, sess := pushSession(t, a, c, blobstore.SHA256)
	if _, err := a.Stat(ctx(t), d); err != nil {
		t.Fatal(err)
	}
	key := a.dataKey(sess.ID())
	if _, err := srv.Client().DeleteObject(ctx(t), &awss3.DeleteObjectInput{Bucket: &bucket, Key: &key}); err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]*Store{"cached": a, "uncached": b} {
		if _, err := s.Stat(ctx(t), d); !errors.Is(err, blobstore.ErrNotFound) {
			t.Errorf("%s: Stat: %v, want ErrNotFound", name, err)
		}
		if _, err := s.Open(ctx(t), d); !errors.Is(err, blobstore.ErrNotFound) {
			t.Errorf("%s: Open: %v, want ErrNotFound", name, err)
		}
		if _, err := s.OpenRange(ctx(t), d, 0, 10); !errors.Is(err, blobstore.ErrNotFound) {
			t.Errorf("%s: OpenRange: %v, want ErrNotFound", name, err)
		}
		if b, err := s.OpenRecorded(ctx(t), d, int64(len(c))); err != nil {
			t.Errorf("%s: OpenRecorded: %v", name, err)
		} else if _, err := io.ReadAll(b); !errors.Is(err, blobstore.ErrNotFound) {
			t.Errorf("%s: read OpenRecorded: %v, want ErrNotFound", name, err)
		}
	}
	// Pushed again through a session on b: a's cached link names the
	// gone data, and a finds the new one.
	if _, sess2 := pushSession(t, b, c, blobstore.SHA256); sess2.ID() == sess.ID() {
		t.Fatal("same session id")
	}
	for name, s := range map[string]*Store{"cached": a, "uncached": b} {
		if got, err := readAll(t, s, d); err != nil || !bytes.Equal(got, c) {
			t.Errorf("%s: read after the push again: %v", name, err)
		}
	}
}

// A replica's cached link goes stale when another replica deletes the
// blob and it is pushed again (new data): reads find the new data.
func TestCachedLinkMoved(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	a, b := newStore(t, srv, bucket, "reg/"), newStore(t, srv, bucket, "reg/")
	c := randomBytes(minPartSize + 1000)
	d, first := pushSession(t, b, c, blobstore.SHA256)
	if got, err := readAll(t, a, d); err != nil || !bytes.Equal(got, c) {
		t.Fatal(err)
	}
	if err := b.Delete(ctx(t), d); err != nil {
		t.Fatal(err)
	}
	_, second := pushSession(t, b, c, blobstore.SHA256)
	if l, ok := a.links.get(d); !ok || l.Data != first.ID() {
		t.Fatalf("a's cache: %+v, %v; want the first push's link", l, ok)
	}
	// Each read path on its own, each starting from the stale link.
	reads := map[string]func() error{
		"Stat": func() error { _, err := a.Stat(ctx(t), d); return err },
		"OpenRange": func() error {
			rc, err := a.OpenRange(ctx(t), d, 0, -1)
			if err == nil {
				var got []byte
				got, err = io.ReadAll(rc)
				rc.Close()
				if err == nil && !bytes.Equal(got, c) {
					err = errors.New("other bytes")
				}
			}
			return err
		},
	}
	for name, read := range reads {
		a.links.put(d, link{Data: first.ID(), Size: int64(len(c))})
		if err := read(); err != nil {
			t.Errorf("%s through the stale link: %v", name, err)
		}
		if l, _ := a.links.get(d); l.Data != second.ID() {
			t.Errorf("%s: the cache holds %+v, want the second push's link", name, l)
		}
	}
}

// A redirect of a linked blob is a presigned URL of its data object, which
// a plain HTTP GET (and a ranged one) reads.
func TestRedirectLinked(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	s := newStore(t, srv, bucket, "reg/")
	r, err := s.Redirecting(time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	c := randomBytes(minPartSize + 1000)
	d, sess := pushSession(t, s, c, blobstore.SHA256)
	u, ok, err := r.BlobURL(ctx(t), d, int64(len(c)))
	if err != nil || !ok {
		t.Fatalf("BlobURL: %v, %v", ok, err)
	}
	if !strings.Contains(u, "/"+s.dataKey(sess.ID())+"?") {
		t.Fatalf("URL %q does not name the data object %s", u, s.dataKey(sess.ID()))
	}
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, c) {
		t.Fatalf("GET of the URL: %s, %d bytes", resp.Status, len(body))
	}
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	req.Header.Set("Range", "bytes=10-19")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, c[10:20]) {
		t.Fatalf("ranged GET of the URL: %s, %q", resp.Status, body)
	}
}

// Sessions on four replicas commit one digest at once: all succeed,
// exactly one link and its data stay, and the losers' data is gone.
func TestConcurrentCommitsLeaveOneLink(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	c := randomBytes(minPartSize + 1000)
	d := blobstore.FromBytes(blobstore.SHA256, c)
	const n = 4
	stores := make([]*Store, n)
	sessions := make([]blobstore.Session, n)
	for i := range n {
		stores[i] = newStore(t, srv, bucket, "reg/")
		sess, err := stores[i].NewSession(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sess.Append(ctx(t), 0, bytes.NewReader(c)); err != nil {
			t.Fatal(err)
		}
		sessions[i] = sess
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { _, errs[i] = sessions[i].Commit(ctx(t), d, int64(len(c))) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("commit %d: %v", i, err)
		}
	}
	l, err := stores[0].readLink(ctx(t), d)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{stores[0].dataKey(l.Data), stores[0].markerKey(l.Data, d), stores[0].linkKey(d)}
	if got := stores[0].objectKeys(t, srv, bucket); !slices.Equal(got, want) {
		t.Fatalf("bucket %q, want only the winner's %q", got, want)
	}
	for _, s := range stores {
		if got, err := readAll(t, s, d); err != nil || !bytes.Equal(got, c) {
			t.Fatalf("read: %v", err)
		}
	}
}

// A commit that linked its data but whose answer was lost (the replica
// died before it removed the session's record): the client's retry
// commits the state from before again, and expiry cancels it; neither
// may free the linked data.
func TestCommitRetriedAfterLink(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	s := newStore(t, srv, bucket, "reg/")
	c := randomBytes(minPartSize + 1000)
	d := blobstore.FromBytes(blobstore.SHA256, c)
	sess, err := s.NewSession(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Append(ctx(t), 0, bytes.NewReader(c)); err != nil {
		t.Fatal(err)
	}
	before, err := sess.State()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Commit(ctx(t), d, -1); err != nil {
		t.Fatal(err)
	}
	for _, step := range []string{"commit", "cancel"} {
		again, err := newStore(t, srv, bucket, "reg/").ResumeSession(ctx(t), before)
		if err != nil {
			t.Fatal(err)
		}
		if step == "commit" {
			_, err = again.Commit(ctx(t), d, -1)
		} else {
			err = again.Cancel(ctx(t))
		}
		if err != nil {
			t.Fatalf("%s of the state from before the commit: %v", step, err)
		}
		if got, err := readAll(t, newStore(t, srv, bucket, "reg/"), d); err != nil || !bytes.Equal(got, c) {
			t.Fatalf("after the %s again: %v", step, err)
		}
	}
}

// The sweep's view of data: a linked blob's data is never a leftover,
// whatever the page size (a page may end between data and its marker);
// data no link names is, under its session, and dropping it frees it and
// its marker. A crash of Delete between the link and the data leaves
// such data.
func TestLeftoverData(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	s := newStore(t, srv, bucket, "reg/")
	var kept []blobstore.Digest
	for range 3 {
		d, _ := pushSession(t, s, randomBytes(minPartSize+10), blobstore.SHA256)
		kept = append(kept, d)
	}
	for _, n := range []int{1, 2, 3, 1000} {
		if ls := allLeftovers(t, s, n); len(ls) != 0 {
			t.Fatalf("pages of %d: leftovers %+v with only linked blobs", n, ls)
		}
	}
	// Delete cut off after the link went.
	orphan, sess := pushSession(t, s, randomBytes(minPartSize+20), blobstore.SHA256)
	if err := s.deleteObject(ctx(t), s.linkKey(orphan)); err != nil {
		t.Fatal(err)
	}
	if _, err := newStore(t, srv, bucket, "reg/").Stat(ctx(t), orphan); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("Stat of a blob whose link is gone: %v", err)
	}
	for _, n := range []int{1, 2, 1000} {
		ls := allLeftovers(t, s, n)
		if len(ls) != 1 || ls[0].Key != s.dataKey(sess.ID()) || ls[0].Session != sess.ID() || ls[0].Upload != "" {
			t.Fatalf("pages of %d: leftovers %+v, want the orphaned data of %s", n, ls, sess.ID())
		}
	}
	l := allLeftovers(t, s, 1000)[0]
	// Dropping checks again: linked meanwhile (here: by hand), it stays.
	if _, err := s.putLink(ctx(t), orphan, link{Data: sess.ID(), Size: minPartSize + 20}, true); err != nil {
		t.Fatal(err)
	}
	if err := s.DropLeftover(ctx(t), l); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stat(ctx(t), orphan); err != nil {
		t.Fatalf("DropLeftover freed linked data: %v", err)
	}
	if err := s.deleteObject(ctx(t), s.linkKey(orphan)); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := s.DropLeftover(ctx(t), l); err != nil {
			t.Fatal(err)
		}
	}
	if objects := s.objectKeys(t, srv, bucket); len(objects) != 9 || slices.ContainsFunc(objects, func(k string) bool { return strings.Contains(k, sess.ID()) }) {
		t.Fatalf("after the drop: %q; want the three linked blobs only", objects)
	}
	for _, d := range kept {
		if _, err := s.Stat(ctx(t), d); err != nil {
			t.Fatal(err)
		}
	}
}

func allLeftovers(t *testing.T, s *Store, n int) []blobstore.Leftover {
	t.Helper()
	var all []blobstore.Leftover
	cursor := ""
	for range 1000 {
		ls, next, err := s.Leftovers(ctx(t), cursor, n)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, ls...)
		if next == "" {
			return all
		}
		cursor = next
	}
	t.Fatal("the listing does not end")
	return nil
}
