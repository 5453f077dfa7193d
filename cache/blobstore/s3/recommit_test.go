package s3

import (
	"bytes"
	"io"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
)

// TestCommitAfterCompletedTry: a commit whose first try completed the
// session's multipart upload and then died (the replica killed before it
// linked the data and recorded the blob) is tried again from the state
// stored before it, on another replica. The retry finds the upload gone
// when it sends the tail as the last part; the data object is there,
// whole, so it links it and the blob is pushed. Before, the retry
// answered ErrSessionUnknown (the registry's 404 BLOB_UPLOAD_UNKNOWN),
// and the client had to push the whole blob again: seen in e2e
// TestReplicaKillMidCommit.
func TestCommitAfterCompletedTry(t *testing.T) {
	srv := s3test.Start(t)
	s := newStore(t, srv, srv.Bucket(t), "")
	c := randomBytes(minPartSize + 1<<20 + 3) // a part and a tail
	d := blobstore.FromBytes(blobstore.SHA256, c)
	sess, err := s.NewSession(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Append(ctx(t), 0, bytes.NewReader(c)); err != nil {
		t.Fatal(err)
	}
	state, err := sess.State()
	if err != nil {
		t.Fatal(err)
	}

	first, err := s.ResumeSession(ctx(t), state)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := first.(*session).assemble(ctx(t)); err != nil {
		t.Fatalf("the first try's assembly: %v", err)
	}
	// The first try dies here, before it links the data.

	retry, err := s.ResumeSession(ctx(t), state)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := retry.Commit(ctx(t), d, -1); err != nil {
		t.Fatalf("the retry of a commit whose first try completed the upload: %v", err)
	}
	b, err := s.Open(ctx(t), d)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if got, err := io.ReadAll(b); err != nil || !bytes.Equal(got, c) {
		t.Fatalf("the blob after the retry: %d of %d bytes, %v", len(got), len(c), err)
	}
}
