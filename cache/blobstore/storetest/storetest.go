// Package storetest is the contract every blobstore.Store keeps, as one
// suite a backend runs against itself:
//
//	func TestContract(t *testing.T) { storetest.Run(t, newBackend) }
//
// It speaks only through the blobstore interfaces (and real HTTP through
// http.ServeContent for ranges), so the same assertions hold a folder and
// a bucket to the same behaviour.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
)

// MiB is S3's minimum part size, the boundary sizes are chosen around.
const MiB = 1 << 20

// Backend opens a store on one backend. Every call returns another
// instance over the same bytes, as another replica would have.
type Backend func() blobstore.Store

// Run runs the contract against fresh, empty backends from newBackend,
// one per subtest.
func Run(t *testing.T, newBackend func(t *testing.T) Backend) {
	tests := []struct {
		name string
		run  func(t *testing.T, b Backend)
	}{
		{"PutStatOpen", testPutStatOpen},
		{"PutAgainIsIdempotent", testPutAgain},
		{"PutRefusesWrongBytes", testPutRefuses},
		{"PutReaderFailsHalfway", testPutReaderFails},
		{"InvalidDigestsAreRefused", testInvalidDigests},
		{"Delete", testDelete},
		{"LostBlobIsUnknownToEveryRead", testLostBlob},
		{"OpenRangeEdges", testOpenRangeEdges},
		{"ServeContentRanges", testServeContent},
		{"SessionChunksAcrossReplicas", testSessionChunks},
		{"SessionOffsetMismatch", testSessionOffsetMismatch},
		{"SessionAppendIsAllOrNothing", testSessionAppendAllOrNothing},
		{"SessionCommitWrongDigest", testSessionCommitWrongDigest},
		{"SessionCommitSHA512", testSessionCommitSHA512},
		{"SessionCommitSizeMismatch", testSessionCommitSizeMismatch},
		{"SessionEmpty", testSessionEmpty},
		{"SessionCommitExisting", testSessionCommitExisting},
		{"SessionBlobDeletedAndPushedAgain", testSessionBlobDeletedAndPushedAgain},
		{"SessionCancel", testSessionCancel},
		{"SessionStateGarbage", testSessionStateGarbage},
		{"ConcurrentCommitsOfOneDigest", testConcurrentCommits},
		{"Leftovers", testLeftovers},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.run(t, newBackend(t)) })
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

// content returns n pseudo-random bytes, different for each seed.
func content(seed uint64, n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 7}).Read(b)
	return b
}

func sha256Of(b []byte) blobstore.Digest { return blobstore.FromBytes(blobstore.SHA256, b) }

func put(t *testing.T, s blobstore.Store, b []byte) blobstore.Digest {
	t.Helper()
	d := sha256Of(b)
	info, err := s.Put(ctx(t), d, int64(len(b)), bytes.NewReader(b))
	if err != nil {
		t.Fatalf("Put %d bytes: %v", len(b), err)
	}
	if info.Digest != d || info.Size != int64(len(b)) {
		t.Fatalf("Put = %+v, want %s, %d bytes", info, d, len(b))
	}
	return d
}

// wantBlob checks that d holds exactly b, through Stat and Open.
func wantBlob(t *testing.T, s blobstore.Store, d blobstore.Digest, b []byte) {
	t.Helper()
	info, err := s.Stat(ctx(t), d)
	if err != nil {
		t.Fatalf("Stat %s: %v", d, err)
	}
	if info.Size != int64(len(b)) || info.Digest != d {
		t.Fatalf("Stat = %+v, want %d bytes", info, len(b))
	}
	blob, err := s.Open(ctx(t), d)
	if err != nil {
		t.Fatalf("Open %s: %v", d, err)
	}
	defer blob.Close()
	if blob.Size() != int64(len(b)) {
		t.Fatalf("Blob.Size = %d, want %d", blob.Size(), len(b))
	}
	got, err := io.ReadAll(blob)
	if err != nil {
		t.Fatalf("read %s: %v", d, err)
	}
	if !bytes.Equal(got, b) {
		t.Fatalf("%s holds %d bytes (digest %s), want %d bytes", d, len(got), sha256Of(got), len(b))
	}
}

func wantAbsent(t *testing.T, s blobstore.Store, d blobstore.Digest) {
	t.Helper()
	if info, err := s.Stat(ctx(t), d); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("Stat %s = %+v, %v; want ErrNotFound", d, info, err)
	}
	if _, err := s.Open(ctx(t), d); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("Open %s: %v; want ErrNotFound", d, err)
	}
}

func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: %v, want %v", what, err, want)
	}
}

func testPutStatOpen(t *testing.T, b Backend) {
	s := b()
	for i, n := range []int{0, 1, 4096, 5*MiB - 1, 5 * MiB, 5*MiB + 1, 12 * MiB} {
		c := content(uint64(i), n)
		d := put(t, s, c)
		wantBlob(t, s, d, c)
		wantBlob(t, b(), d, c) // another replica sees it too
	}
	// Unknown size (-1) is allowed.
	c := content(99, 6*MiB+5)
	if _, err := s.Put(ctx(t), sha256Of(c), -1, bytes.NewReader(c)); err != nil {
		t.Fatalf("Put with unknown size: %v", err)
	}
	wantBlob(t, s, sha256Of(c), c)
	// sha512 is as good as sha256.
	d512 := blobstore.FromBytes(blobstore.SHA512, c)
	if _, err := s.Put(ctx(t), d512, int64(len(c)), bytes.NewReader(c)); err != nil {
		t.Fatalf("Put sha512: %v", err)
	}
	wantBlob(t, s, d512, c)
	wantAbsent(t, s, sha256Of([]byte("never stored")))
}

func testPutAgain(t *testing.T, b Backend) {
	s := b()
	for i, n := range []int{10, 6 * MiB} {
		c := content(uint64(i), n)
		d := put(t, s, c)
		put(t, b(), c)
		wantBlob(t, s, d, c)
	}
}

func testPutRefuses(t *testing.T, b Backend) {
	s := b()
	for _, n := range []int{100, 12 * MiB} {
		c := content(1, n)
		other := sha256Of(append([]byte("x"), c...))
		cases := []struct {
			name string
			d    blobstore.Digest
			size int64
			want error
		}{
			{"wrong digest", other, int64(n), blobstore.ErrDigestMismatch},
			{"wrong digest, unknown size", other, -1, blobstore.ErrDigestMismatch},
			{"declared longer", sha256Of(c), int64(n + 1), blobstore.ErrSizeMismatch},
			{"declared shorter", sha256Of(c), int64(n - 1), blobstore.ErrSizeMismatch},
			{"declared shorter, digest of the shorter bytes", sha256Of(c[:n-1]), int64(n - 1), blobstore.ErrSizeMismatch},
		}
		for _, tc := range cases {
			_, err := s.Put(ctx(t), tc.d, tc.size, bytes.NewReader(c))
			wantErr(t, fmt.Sprintf("%d bytes, %s", n, tc.name), err, tc.want)
			wantAbsent(t, s, tc.d)
		}
	}
}

// failingReader gives n bytes of c, then fails.
type failingReader struct {
	r io.Reader
}

var errBroken = errors.New("connection broken")

func (f *failingReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, errBroken
	}
	return n, err
}

func broken(c []byte, n int) io.Reader { return &failingReader{r: bytes.NewReader(c[:n])} }

func testPutReaderFails(t *testing.T, b Backend) {
	s := b()
	for _, n := range []int{1000, 7 * MiB} {
		c := content(2, n+100)
		d := sha256Of(c)
		_, err := s.Put(ctx(t), d, int64(len(c)), broken(c, n))
		wantErr(t, "Put from a broken reader", err, errBroken)
		wantAbsent(t, s, d)
	}
}

func testInvalidDigests(t *testing.T, b Backend) {
	s := b()
	good := sha256Of([]byte("x"))
	for _, d := range []blobstore.Digest{
		{},
		{Algorithm: blobstore.SHA256, Hex: "../../" + good.Hex[6:]},
		{Algorithm: blobstore.SHA256, Hex: good.Hex[:62] + "/x"},
		{Algorithm: "../blobs", Hex: good.Hex},
		{Algorithm: blobstore.SHA256, Hex: "AB" + good.Hex[2:]},
	} {
		c := ctx(t)
		_, err := s.Stat(c, d)
		wantErr(t, "Stat "+d.String(), err, blobstore.ErrDigestInvalid)
		_, err = s.Open(c, d)
		wantErr(t, "Open "+d.String(), err, blobstore.ErrDigestInvalid)
		_, err = s.OpenRange(c, d, 0, 1)
		wantErr(t, "OpenRange "+d.String(), err, blobstore.ErrDigestInvalid)
		_, err = s.Put(c, d, 1, bytes.NewReader([]byte("x")))
		wantErr(t, "Put "+d.String(), err, blobstore.ErrDigestInvalid)
		wantErr(t, "Delete "+d.String(), s.Delete(c, d), blobstore.ErrDigestInvalid)
		sess, err := s.NewSession(c)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sess.Append(c, 0, bytes.NewReader([]byte("x"))); err != nil {
			t.Fatal(err)
		}
		_, err = sess.Commit(c, d, -1)
		wantErr(t, "Commit "+d.String(), err, blobstore.ErrDigestInvalid)
		if err := sess.Cancel(c); err != nil {
			t.Fatal(err)
		}
	}
}

func testDelete(t *testing.T, b Backend) {
	s := b()
	keep := put(t, s, []byte("keep"))
	for _, n := range []int{3, 6 * MiB} {
		c := content(3, n)
		d := put(t, s, c)
		if err := b().Delete(ctx(t), d); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		wantAbsent(t, s, d)
		if err := s.Delete(ctx(t), d); err != nil {
			t.Fatalf("Delete again: %v", err)
		}
		// Deleted, it can be put again.
		put(t, s, c)
		wantBlob(t, s, d, c)
	}
	wantBlob(t, s, keep, []byte("keep"))
}

// testLostBlob: a blob deleted by another instance (behind the back of
// whatever metadata recorded it) is unknown to every way of asking, and
// a lazily opened one (RecordedOpener) agrees: Check, which a HEAD asks,
// fails as Start and Read, which a GET asks, do, so a HEAD never says 200
// for a blob a GET answers 404 (OpenRecorded may fail at once instead).
// A blob still stored passes all of them.
func testLostBlob(t *testing.T, b Backend) {
	s := b()
	keep := content(21, 2*MiB+1)
	kd := put(t, s, keep)
	lost := content(22, 3000)
	ld := put(t, s, lost)
	if err := b().Delete(ctx(t), ld); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	wantAbsent(t, s, ld)
	if _, err := s.OpenRange(ctx(t), ld, 0, -1); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("OpenRange of a lost blob: %v, want ErrNotFound", err)
	}
	ro, ok := s.(blobstore.RecordedOpener)
	if !ok {
		return // Stat and Open above are every read it has
	}
	cases := []struct {
		what string
		d    blobstore.Digest
		size int64
		want error // nil: readable
	}{
		{"stored", kd, int64(len(keep)), nil},
		{"lost", ld, int64(len(lost)), blobstore.ErrNotFound},
	}
	for _, c := range cases {
		check := func(what string, err error) {
			t.Helper()
			if c.want == nil && err != nil || c.want != nil && !errors.Is(err, c.want) {
				t.Fatalf("%s of a %s blob: %v, want %v", what, c.what, err, c.want)
			}
		}
		blob, err := ro.OpenRecorded(ctx(t), c.d, c.size)
		if err != nil {
			check("OpenRecorded", err) // a backend that asked at once
			continue
		}
		_, lazy := blob.(blobstore.Starter)
		_, checks := blob.(blobstore.Checker)
		blob.Close()
		if lazy && !checks {
			t.Fatalf("OpenRecorded of a %s blob is a %T: it reads lazily (Starter) but has no Check, so a HEAD cannot learn what a GET would", c.what, blob)
		}
		open := func() blobstore.Blob {
			t.Helper()
			blob, err := ro.OpenRecorded(ctx(t), c.d, c.size)
			if err != nil {
				t.Fatalf("OpenRecorded of a %s blob: %v", c.what, err)
			}
			t.Cleanup(func() { blob.Close() })
			return blob
		}
		if ck, ok := open().(blobstore.Checker); ok {
			check("Check", ck.Check())
		}
		if st, ok := open().(blobstore.Starter); ok {
			check("Start", st.Start())
		}
		if c.want != nil {
			_, err := io.ReadAll(open())
			check("Read", err)
		}
	}
}

func testOpenRangeEdges(t *testing.T, b Backend) {
	s := b()
	c := content(4, 6*MiB+3)
	d := put(t, s, c)
	size := int64(len(c))
	ok := []struct{ off, n int64 }{
		{0, -1}, {0, 1}, {0, size}, {size - 1, 1}, {size - 1, -1}, {5 * MiB, MiB}, {1, size - 1},
	}
	for _, r := range ok {
		rc, err := s.OpenRange(ctx(t), d, r.off, r.n)
		if err != nil {
			t.Fatalf("OpenRange(%d, %d): %v", r.off, r.n, err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatalf("read range (%d, %d): %v", r.off, r.n, err)
		}
		end := size
		if r.n >= 0 {
			end = r.off + r.n
		}
		if !bytes.Equal(got, c[r.off:end]) {
			t.Fatalf("OpenRange(%d, %d) gave %d bytes, not the blob's", r.off, r.n, len(got))
		}
	}
	bad := []struct{ off, n int64 }{
		{size, -1}, {size, 1}, {size + 10, 1}, {size - 1, 2}, {0, size + 1}, {-1, 1}, {0, 0}, {0, -2},
	}
	for _, r := range bad {
		rc, err := s.OpenRange(ctx(t), d, r.off, r.n)
		if err == nil {
			rc.Close()
		}
		wantErr(t, fmt.Sprintf("OpenRange(%d, %d) of %d bytes", r.off, r.n, size), err, blobstore.ErrRange)
	}
	empty := put(t, s, nil)
	_, err := s.OpenRange(ctx(t), empty, 0, -1)
	wantErr(t, "OpenRange of an empty blob", err, blobstore.ErrRange)
	_, err = s.OpenRange(ctx(t), sha256Of([]byte("absent")), 0, -1)
	wantErr(t, "OpenRange of an absent blob", err, blobstore.ErrNotFound)
}

// testServeContent serves a Blob the way the registry will, through
// http.ServeContent, and checks ranges over real HTTP, 206 and 416.
func testServeContent(t *testing.T, b Backend) {
	s := b()
	c := content(5, 12*MiB+17)
	d := put(t, s, c)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		blob, err := s.Open(r.Context(), d)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer blob.Close()
		http.ServeContent(w, r, "", time.Time{}, blob)
	}))
	defer srv.Close()
	size := len(c)
	cases := []struct {
		rng    string
		status int
		want   []byte
	}{
		{"", http.StatusOK, c},
		{"bytes=0-0", http.StatusPartialContent, c[:1]},
		{fmt.Sprintf("bytes=%d-", size-1), http.StatusPartialContent, c[size-1:]},
		{fmt.Sprintf("bytes=%d-%d", 5*MiB-3, 7*MiB), http.StatusPartialContent, c[5*MiB-3 : 7*MiB+1]},
		{"bytes=-10", http.StatusPartialContent, c[size-10:]},
		{fmt.Sprintf("bytes=%d-", size), http.StatusRequestedRangeNotSatisfiable, nil},
		{fmt.Sprintf("bytes=%d-%d", size+5, size+10), http.StatusRequestedRangeNotSatisfiable, nil},
	}
	for _, tc := range cases {
		req, _ := http.NewRequestWithContext(ctx(t), http.MethodGet, srv.URL, nil)
		if tc.rng != "" {
			req.Header.Set("Range", tc.rng)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("Range %q: %v", tc.rng, err)
		}
		if resp.StatusCode != tc.status {
			t.Fatalf("Range %q: status %d, want %d", tc.rng, resp.StatusCode, tc.status)
		}
		if tc.want != nil && !bytes.Equal(body, tc.want) {
			t.Fatalf("Range %q: %d bytes, not the blob's %d", tc.rng, len(body), len(tc.want))
		}
	}
}

// resume moves a session to store s through its state, as the next
// request landing on another replica does.
func resume(t *testing.T, s blobstore.Store, sess blobstore.Session) blobstore.Session {
	t.Helper()
	state, err := sess.State()
	if err != nil {
		t.Fatalf("State: %v", err)
	}
	next, err := s.ResumeSession(ctx(t), state)
	if err != nil {
		t.Fatalf("ResumeSession: %v", err)
	}
	if next.ID() != sess.ID() || next.Size() != sess.Size() {
		t.Fatalf("resumed session %s at %d, want %s at %d", next.ID(), next.Size(), sess.ID(), sess.Size())
	}
	return next
}

// appendChunks writes c in chunks of the given sizes, each through the
// next of stores in turn, resuming from the previous one's state.
func appendChunks(t *testing.T, stores []blobstore.Store, c []byte, sizes []int) blobstore.Session {
	t.Helper()
	sess, err := stores[0].NewSession(ctx(t))
	if err != nil {
		t.Fatalf("NewSession: %v", err)
	}
	off := 0
	for i, n := range sizes {
		if i > 0 {
			sess = resume(t, stores[i%len(stores)], sess)
		}
		got, err := sess.Append(ctx(t), int64(off), bytes.NewReader(c[off:off+n]))
		if err != nil {
			t.Fatalf("Append chunk %d (%d bytes at %d): %v", i, n, off, err)
		}
		if got != int64(n) || sess.Size() != int64(off+n) {
			t.Fatalf("Append chunk %d: wrote %d, size %d; want %d, %d", i, got, sess.Size(), n, off+n)
		}
		off += n
	}
	if off != len(c) {
		t.Fatalf("test bug: chunks cover %d of %d bytes", off, len(c))
	}
	return sess
}

func sum(sizes []int) int {
	n := 0
	for _, s := range sizes {
		n += s
	}
	return n
}

func testSessionChunks(t *testing.T, b Backend) {
	stores := []blobstore.Store{b(), b()}
	chunkings := [][]int{
		{1, 3*MiB + 7, 5*MiB - 1, 5*MiB + 3, 2*MiB + 11, 0, 13},
		{12 * MiB},
		{5 * MiB, 5 * MiB, 1},
		{5 * MiB, 5 * MiB}, // whole parts, no tail
		{MiB, MiB, MiB, MiB, MiB, MiB},
		{7},
	}
	for i, sizes := range chunkings {
		c := content(uint64(10+i), sum(sizes))
		sess := appendChunks(t, stores, c, sizes)
		d := sha256Of(c)
		wantAbsent(t, stores[0], d) // nothing is visible before the commit
		sess = resume(t, stores[(i+1)%2], sess)
		info, err := sess.Commit(ctx(t), d, int64(len(c)))
		if err != nil {
			t.Fatalf("chunks %v: Commit: %v", sizes, err)
		}
		if info.Digest != d || info.Size != int64(len(c)) {
			t.Fatalf("Commit = %+v", info)
		}
		wantBlob(t, stores[0], d, c)
		wantBlob(t, stores[1], d, c)
		// A committed session is over.
		_, err = sess.Append(ctx(t), sess.Size(), bytes.NewReader([]byte("more")))
		wantErr(t, "Append after Commit", err, blobstore.ErrSessionUnknown)
		state, err := sess.State()
		if err != nil {
			t.Fatal(err)
		}
		if again, err := stores[0].ResumeSession(ctx(t), state); err == nil {
			_, err = again.Commit(ctx(t), d, -1)
			wantErr(t, "Commit of a committed session's state", err, blobstore.ErrSessionUnknown)
		}
	}
}

func testSessionOffsetMismatch(t *testing.T, b Backend) {
	s := b()
	c := content(20, 6*MiB)
	sess := appendChunks(t, []blobstore.Store{s}, c[:MiB], []int{MiB})
	for _, off := range []int64{0, MiB - 1, MiB + 1, -1} {
		_, err := sess.Append(ctx(t), off, bytes.NewReader(c[MiB:]))
		wantErr(t, fmt.Sprintf("Append at %d of %d", off, MiB), err, blobstore.ErrOffsetMismatch)
		if sess.Size() != MiB {
			t.Fatalf("a refused chunk changed the size to %d", sess.Size())
		}
	}
	if _, err := sess.Append(ctx(t), MiB, bytes.NewReader(c[MiB:])); err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Commit(ctx(t), sha256Of(c), -1); err != nil {
		t.Fatal(err)
	}
	wantBlob(t, s, sha256Of(c), c)
}

func testSessionAppendAllOrNothing(t *testing.T, b Backend) {
	stores := []blobstore.Store{b(), b()}
	c := content(21, 14*MiB+5)
	sess := appendChunks(t, stores, c[:3*MiB], []int{3 * MiB})
	before, err := sess.State()
	if err != nil {
		t.Fatal(err)
	}
	// A chunk that breaks after two parts' worth of bytes.
	_, err = sess.Append(ctx(t), 3*MiB, broken(c[3*MiB:], 8*MiB))
	wantErr(t, "Append from a broken reader", err, errBroken)
	after, err := sess.State()
	if err != nil {
		t.Fatal(err)
	}
	if sess.Size() != 3*MiB || !bytes.Equal(before, after) {
		t.Fatalf("a failed Append changed the session: size %d", sess.Size())
	}
	// The client retries the chunk, on another replica.
	sess = resume(t, stores[1], sess)
	if _, err := sess.Append(ctx(t), 3*MiB, bytes.NewReader(c[3*MiB:])); err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Commit(ctx(t), sha256Of(c), int64(len(c))); err != nil {
		t.Fatal(err)
	}
	wantBlob(t, stores[0], sha256Of(c), c)
}

func testSessionCommitWrongDigest(t *testing.T, b Backend) {
	stores := []blobstore.Store{b(), b()}
	for _, sizes := range [][]int{{100}, {6 * MiB, 5 * MiB}} {
		c := content(22, sum(sizes))
		sess := appendChunks(t, stores, c, sizes)
		wrong := sha256Of(append(c, 'x'))
		_, err := sess.Commit(ctx(t), wrong, -1)
		wantErr(t, "Commit with a wrong digest", err, blobstore.ErrDigestMismatch)
		wantAbsent(t, stores[0], wrong)
		wantAbsent(t, stores[0], sha256Of(c))
		// The session is still there for the right digest.
		sess = resume(t, stores[1], sess)
		if _, err := sess.Commit(ctx(t), sha256Of(c), -1); err != nil {
			t.Fatalf("Commit after a wrong one: %v", err)
		}
		wantBlob(t, stores[0], sha256Of(c), c)
		wantAbsent(t, stores[0], wrong)
	}
}

func testSessionCommitSHA512(t *testing.T, b Backend) {
	stores := []blobstore.Store{b(), b()}
	for _, sizes := range [][]int{{100}, {6 * MiB, 5*MiB + 1}} {
		c := content(23, sum(sizes))
		sess := appendChunks(t, stores, c, sizes)
		right := blobstore.FromBytes(blobstore.SHA512, c)
		wrong := blobstore.FromBytes(blobstore.SHA512, append(c, 'x'))
		_, err := sess.Commit(ctx(t), wrong, -1)
		wantErr(t, "Commit with a wrong sha512", err, blobstore.ErrDigestMismatch)
		wantAbsent(t, stores[0], wrong)
		wantAbsent(t, stores[0], right)
		sess = resume(t, stores[1], sess)
		if _, err := sess.Commit(ctx(t), right, int64(len(c))); err != nil {
			t.Fatalf("Commit sha512: %v", err)
		}
		wantBlob(t, stores[0], right, c)
	}
}

func testSessionCommitSizeMismatch(t *testing.T, b Backend) {
	s := b()
	c := content(24, 6*MiB)
	sess := appendChunks(t, []blobstore.Store{s}, c, []int{len(c)})
	for _, n := range []int64{0, int64(len(c)) - 1, int64(len(c)) + 1} {
		_, err := sess.Commit(ctx(t), sha256Of(c), n)
		wantErr(t, fmt.Sprintf("Commit declaring %d bytes", n), err, blobstore.ErrSizeMismatch)
		wantAbsent(t, s, sha256Of(c))
	}
	if err := sess.Cancel(ctx(t)); err != nil {
		t.Fatal(err)
	}
	wantAbsent(t, s, sha256Of(c))
}

func testSessionEmpty(t *testing.T, b Backend) {
	s := b()
	sess, err := s.NewSession(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if n, err := sess.Append(ctx(t), 0, bytes.NewReader(nil)); err != nil || n != 0 {
		t.Fatalf("empty Append = %d, %v", n, err)
	}
	sess = resume(t, b(), sess)
	d := sha256Of(nil)
	if _, err := sess.Commit(ctx(t), d, 0); err != nil {
		t.Fatalf("Commit of an empty session: %v", err)
	}
	wantBlob(t, s, d, nil)
}

func testSessionCommitExisting(t *testing.T, b Backend) {
	s := b()
	for _, n := range []int{10, 6 * MiB} {
		c := content(25, n)
		d := put(t, s, c)
		sess := appendChunks(t, []blobstore.Store{s, b()}, c, []int{n / 2, n - n/2})
		if _, err := sess.Commit(ctx(t), d, int64(n)); err != nil {
			t.Fatalf("Commit of a digest that exists: %v", err)
		}
		wantBlob(t, s, d, c)
	}
}

// testSessionBlobDeletedAndPushedAgain: a blob a session committed reads
// the same on every replica (whole and by range), including one that read
// it before another replica deleted it and pushed it again, by a session
// or by a Put; a Delete leaves it absent everywhere.
func testSessionBlobDeletedAndPushedAgain(t *testing.T, b Backend) {
	a, c := b(), b()
	for _, n := range []int{10, 6*MiB + 3} {
		c32 := content(32, n)
		d := sha256Of(c32)
		push := func(s blobstore.Store) {
			t.Helper()
			sess := appendChunks(t, []blobstore.Store{s}, c32, []int{n / 2, n - n/2})
			if _, err := sess.Commit(ctx(t), d, int64(n)); err != nil {
				t.Fatalf("Commit: %v", err)
			}
		}
		push(c)
		for _, s := range []blobstore.Store{a, c} {
			wantBlob(t, s, d, c32)
			wantRange(t, s, d, c32, int64(n/3), int64(n/3))
		}
		if err := c.Delete(ctx(t), d); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		wantAbsent(t, a, d)
		wantAbsent(t, c, d)
		push(c)
		wantBlob(t, a, d, c32)
		wantRange(t, a, d, c32, 1, int64(n-1))
		if err := a.Delete(ctx(t), d); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		wantAbsent(t, c, d)
		put(t, c, c32)
		wantBlob(t, a, d, c32)
		if err := c.Delete(ctx(t), d); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		wantAbsent(t, a, d)
	}
}

// wantRange checks OpenRange(offset, length) of d gives those bytes of b.
func wantRange(t *testing.T, s blobstore.Store, d blobstore.Digest, b []byte, offset, length int64) {
	t.Helper()
	rc, err := s.OpenRange(ctx(t), d, offset, length)
	if err != nil {
		t.Fatalf("OpenRange(%d, %d) of %s: %v", offset, length, d, err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil || !bytes.Equal(got, b[offset:offset+length]) {
		t.Fatalf("OpenRange(%d, %d) of %s: %d bytes, %v", offset, length, d, len(got), err)
	}
}

func testSessionCancel(t *testing.T, b Backend) {
	stores := []blobstore.Store{b(), b()}
	for _, sizes := range [][]int{{10}, {6 * MiB, 2 * MiB}} {
		c := content(26, sum(sizes))
		d := sha256Of(c)
		sess := appendChunks(t, stores, c, sizes)
		state, err := sess.State()
		if err != nil {
			t.Fatal(err)
		}
		if err := resume(t, stores[1], sess).Cancel(ctx(t)); err != nil {
			t.Fatalf("Cancel: %v", err)
		}
		wantAbsent(t, stores[0], d)
		// The state from before the cancel names bytes that are gone.
		stale, err := stores[0].ResumeSession(ctx(t), state)
		if err != nil {
			t.Fatal(err)
		}
		_, err = stale.Commit(ctx(t), d, -1)
		wantErr(t, "Commit of a cancelled session", err, blobstore.ErrSessionUnknown)
		wantAbsent(t, stores[0], d)
		if err := stale.Cancel(ctx(t)); err != nil {
			t.Fatalf("Cancel again: %v", err)
		}
	}
}

func testSessionStateGarbage(t *testing.T, b Backend) {
	s := b()
	for _, state := range [][]byte{nil, []byte("{"), []byte(`{"v":999}`), []byte("\x00\x01")} {
		_, err := s.ResumeSession(ctx(t), state)
		wantErr(t, fmt.Sprintf("ResumeSession(%q)", state), err, blobstore.ErrSessionUnknown)
	}
}

// testConcurrentCommits: sessions and Puts of the same bytes racing on
// several replicas all succeed and leave the one right blob.
func testConcurrentCommits(t *testing.T, b Backend) {
	c := content(27, 6*MiB+1)
	d := sha256Of(c)
	const n = 4
	sessions := make([]blobstore.Session, n)
	for i := range sessions {
		sessions[i] = appendChunks(t, []blobstore.Store{b(), b()}, c, []int{3 * MiB, len(c) - 3*MiB})
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range n {
		wg.Add(2)
		go func() {
			defer wg.Done()
			_, err := sessions[i].Commit(context.Background(), d, int64(len(c)))
			errs <- err
		}()
		go func() {
			defer wg.Done()
			_, err := b().Put(context.Background(), d, int64(len(c)), bytes.NewReader(c))
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent commit or put: %v", err)
		}
	}
	wantBlob(t, b(), d, c)
}

// leftovers lists every leftover of s, a page of n at a time.
func leftovers(t *testing.T, sw blobstore.Sweeper, n int) []blobstore.Leftover {
	t.Helper()
	var all []blobstore.Leftover
	cursor := ""
	for page := 0; ; page++ {
		ls, next, err := sw.Leftovers(ctx(t), cursor, n)
		if err != nil {
			t.Fatalf("Leftovers: %v", err)
		}
		all = append(all, ls...)
		if next == "" {
			return all
		}
		if page > 1000 {
			t.Fatalf("the listing does not end: cursor %q", next)
		}
		cursor = next
	}
}

// testLeftovers, for a backend that is a blobstore.Sweeper: the bytes of
// an open session are listed under its ID, with their age, a page at a
// time; a committed blob is never listed; what a cancel or a commit ended
// is not; dropping a session's leftovers frees its bytes, and dropping
// twice is no error.
func testLeftovers(t *testing.T, b Backend) {
	s := b()
	sw, ok := s.(blobstore.Sweeper)
	if !ok {
		t.Skip("not a Sweeper")
	}
	start := time.Now().Add(-time.Minute)
	committed := content(28, 100)
	if _, err := s.Put(ctx(t), sha256Of(committed), -1, bytes.NewReader(committed)); err != nil {
		t.Fatal(err)
	}
	if got := leftovers(t, sw, 2); len(got) != 0 {
		t.Fatalf("leftovers with no session open: %+v", got)
	}
	open := func(seed uint64, n int) blobstore.Session {
		sess := appendChunks(t, []blobstore.Store{s}, content(seed, n), []int{n})
		return sess
	}
	ofSession := func(id string) []blobstore.Leftover {
		var out []blobstore.Leftover
		for _, l := range leftovers(t, sw, 1) {
			if l.Session != id {
				t.Errorf("leftover %s of session %q, none such open", l.Key, l.Session)
			}
			if l.Since.Before(start) || l.Since.After(time.Now().Add(time.Minute)) {
				t.Errorf("leftover %s since %v: not when it was written", l.Key, l.Since)
			}
			out = append(out, l)
		}
		return out
	}

	a := open(29, 6*MiB)
	if len(ofSession(a.ID())) == 0 {
		t.Fatal("an open session with bytes has no leftovers")
	}
	if err := a.Cancel(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if got := ofSession(""); len(got) != 0 {
		t.Fatalf("leftovers after the cancel: %+v", got)
	}

	c := content(30, 6*MiB)
	bsess := open(30, 6*MiB)
	ls := ofSession(bsess.ID())
	for _, l := range ls {
		for range 2 {
			if err := sw.DropLeftover(ctx(t), l); err != nil {
				t.Fatalf("DropLeftover(%s): %v", l.Key, err)
			}
		}
	}
	if got := leftovers(t, sw, 10); len(got) != 0 {
		t.Fatalf("leftovers after dropping them: %+v", got)
	}
	_, err := bsess.Commit(ctx(t), sha256Of(c), -1)
	wantErr(t, "Commit of a session whose leftovers were dropped", err, blobstore.ErrSessionUnknown)
	wantAbsent(t, s, sha256Of(c))

	d := open(31, 10)
	if _, err := d.Commit(ctx(t), sha256Of(content(31, 10)), -1); err != nil {
		t.Fatal(err)
	}
	if got := leftovers(t, sw, 10); len(got) != 0 {
		t.Fatalf("leftovers after a commit: %+v", got)
	}
}

// Full is a backend on storage small enough to fill to the brim (a
// folder on a small tmpfs; an S3 server whose files are on one).
type Full struct {
	// Backend opens stores on the storage.
	Backend Backend
	// Fill takes the storage's free space until about left bytes remain
	// and returns what gives it back.
	Fill func(t *testing.T, left int64) (free func())
}

// RunFull runs the storage-full case of the contract against a fresh
// backend from newFull. It is apart from Run because few backends can be
// filled in a test (a small filesystem to mount): a backend whose test
// cannot mount one skips it.
func RunFull(t *testing.T, newFull func(t *testing.T) Full) {
	t.Run("StorageFull", func(t *testing.T) { testStorageFull(t, newFull(t)) })
}

// testStorageFull: on storage with no room left, a Put (one object, or
// several parts) and a session refuse with ErrStorageFull, which the
// registry answers 507, and leave nothing: no blob, no leftover, a
// session as it was before its Append. The blobs stored before are
// intact, and once space is freed the same writes succeed without a new
// store.
func testStorageFull(t *testing.T, f Full) {
	s := f.Backend()
	keep := content(31, 2*MiB+3)
	kd := put(t, s, keep)
	blobs := [][]byte{content(32, MiB+5), content(33, 6*MiB+7)}
	free := f.Fill(t, MiB/2)
	for _, c := range blobs {
		d := sha256Of(c)
		for _, size := range []int64{int64(len(c)), -1} {
			_, err := s.Put(ctx(t), d, size, bytes.NewReader(c))
			wantErr(t, fmt.Sprintf("Put of %d bytes (declared %d) on full storage", len(c), size), err, blobstore.ErrStorageFull)
		}
		wantAbsent(t, s, d)
	}
	if sw, ok := s.(blobstore.Sweeper); ok {
		if ls := leftovers(t, sw, 100); len(ls) != 0 {
			t.Fatalf("refused Puts left %+v", ls)
		}
	}
	last := blobs[len(blobs)-1]
	sess, err := s.NewSession(ctx(t))
	if err != nil {
		t.Fatalf("NewSession on full storage: %v", err)
	}
	_, err = sess.Append(ctx(t), 0, bytes.NewReader(last))
	if err != nil && sess.Size() != 0 {
		t.Fatalf("a refused Append left the session at %d bytes", sess.Size())
	}
	if err == nil {
		_, err = sess.Commit(ctx(t), sha256Of(last), int64(len(last)))
	}
	wantErr(t, fmt.Sprintf("session of %d bytes on full storage", len(last)), err, blobstore.ErrStorageFull)
	wantAbsent(t, s, sha256Of(last))
	if err := sess.Cancel(ctx(t)); err != nil {
		t.Fatalf("Cancel on full storage: %v", err)
	}
	wantBlob(t, s, kd, keep)

	free()
	for _, c := range blobs[:len(blobs)-1] {
		wantBlob(t, s, put(t, s, c), c)
	}
	sess, err = s.NewSession(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sess.Append(ctx(t), 0, bytes.NewReader(last)); err != nil {
		t.Fatalf("Append once space is freed: %v", err)
	}
	if _, err := sess.Commit(ctx(t), sha256Of(last), int64(len(last))); err != nil {
		t.Fatalf("Commit once space is freed: %v", err)
	}
	wantBlob(t, s, sha256Of(last), last)
	wantBlob(t, s, kd, keep)
}

// Damage is a backend whose stored bytes a test can damage behind its
// stores' back, as a broken tool, an fsck or a bucket restore would.
type Damage struct {
	// Backend opens stores on the storage.
	Backend Backend
	// Replace makes the stored bytes of blob d (stored by a Put or a
	// session's Commit) b instead of d's.
	Replace func(t *testing.T, d blobstore.Digest, b []byte)
}

// commit stores c as a session's commit in two chunks, as a chunked push
// does (on S3, a blob over one part is then linked data, not one object).
func commit(t *testing.T, s blobstore.Store, c []byte) blobstore.Digest {
	t.Helper()
	d := sha256Of(c)
	sess := appendChunks(t, []blobstore.Store{s}, c, []int{len(c) / 2, len(c) - len(c)/2})
	if _, err := sess.Commit(ctx(t), d, int64(len(c))); err != nil {
		t.Fatalf("Commit of %d bytes: %v", len(c), err)
	}
	return d
}

// RunDamage runs the damaged-object cases of the contract against fresh
// backends from newDamage. It is apart from Run because damaging needs a
// way to the storage behind the store, which each backend's test has.
func RunDamage(t *testing.T, newDamage func(t *testing.T) Damage) {
	t.Run("WrongSizeIsReportedByEveryRead", func(t *testing.T) { testWrongSize(t, newDamage(t)) })
	t.Run("PushReplacesWrongSize", func(t *testing.T) { testPushReplacesWrongSize(t, newDamage(t)) })
}

// testWrongSize: an object cut short behind the store's back is reported
// with the length it has by Stat and Open, so a caller that recorded the
// blob's size sees that these are not its bytes; a lazily opened one
// (RecordedOpener, told the recorded size) either says its real length or
// fails Check, Start and Read with ErrSizeMismatch, and never reads as a
// clean blob of the recorded size. A blob beside it is untouched.
func testWrongSize(t *testing.T, dm Damage) {
	s := dm.Backend()
	keep := content(41, 3000)
	kd := put(t, s, keep)
	for i, n := range []int{3001, 2*MiB + 1, 6*MiB + 5} {
		c := content(42, n)
		var d blobstore.Digest
		if i < 2 {
			d = put(t, s, c)
		} else {
			d = commit(t, s, c)
		}
		short := c[:n/2]
		dm.Replace(t, d, short)
		r := dm.Backend() // a replica that never read it
		info, err := r.Stat(ctx(t), d)
		if err != nil || info.Size != int64(len(short)) {
			t.Fatalf("Stat of a blob cut to %d bytes: %+v, %v", len(short), info, err)
		}
		blob, err := r.Open(ctx(t), d)
		if err != nil {
			t.Fatalf("Open of a blob cut short: %v", err)
		}
		if blob.Size() != int64(len(short)) {
			t.Fatalf("Open of a blob cut to %d bytes: Size %d", len(short), blob.Size())
		}
		blob.Close()
		ro, ok := r.(blobstore.RecordedOpener)
		if !ok {
			continue
		}
		open := func() blobstore.Blob {
			t.Helper()
			blob, err := ro.OpenRecorded(ctx(t), d, int64(n))
			if err != nil {
				t.Fatalf("OpenRecorded of a blob cut short: %v", err)
			}
			t.Cleanup(func() { blob.Close() })
			return blob
		}
		if b := open(); b.Size() != int64(n) {
			continue // says its real length: the caller compares
		}
		if ck, ok := open().(blobstore.Checker); ok {
			wantErr(t, "Check of a blob cut short", ck.Check(), blobstore.ErrSizeMismatch)
		}
		if st, ok := open().(blobstore.Starter); ok {
			wantErr(t, "Start of a blob cut short", st.Start(), blobstore.ErrSizeMismatch)
		}
		if got, err := io.ReadAll(open()); err == nil {
			t.Fatalf("Read of a blob cut to %d bytes, opened as %d: %d bytes and no error", len(short), n, len(got))
		}
	}
	wantBlob(t, dm.Backend(), kd, keep)
}

// testPushReplacesWrongSize: a blob cut short behind the store's back is
// healed by pushing it again, by a Put or a session's Commit, on the
// store that read the damaged bytes (whose copy, if it keeps any, must
// not be of those) and on one that never did. "Putting a digest that
// exists" must not mean keeping whatever object is at its key.
func testPushReplacesWrongSize(t *testing.T, dm Damage) {
	for _, n := range []int{3001, 6*MiB + 3} {
		for _, how := range []string{"Put", "Commit"} {
			s := dm.Backend()
			c := content(43, n)
			// Stored as it is then pushed again (on S3, a large
			// commit is linked data).
			var d blobstore.Digest
			if how == "Put" {
				d = put(t, s, c)
			} else {
				d = commit(t, s, c)
			}
			dm.Replace(t, d, c[:n-1])
			if blob, err := s.Open(ctx(t), d); err == nil {
				_, _ = io.Copy(io.Discard, blob) // a copy of these bytes, if any, is wrong
				blob.Close()
			}
			switch how {
			case "Put":
				put(t, dm.Backend(), c)
			case "Commit":
				r := dm.Backend()
				sess := appendChunks(t, []blobstore.Store{r}, c, []int{n / 2, n - n/2})
				if _, err := sess.Commit(ctx(t), d, int64(n)); err != nil {
					t.Fatalf("Commit over a blob cut short: %v", err)
				}
			}
			wantBlob(t, s, d, c)
			wantBlob(t, dm.Backend(), d, c)
		}
	}
}
