package s3

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"testing"
	"testing/iotest"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go/middleware"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
)

// TestVerifiedBodyHoldsTheLastByte: a body whose bytes are not the blob
// (other bytes, too long, too short) never hands over its last byte, so
// the PUT it feeds stays short of its Content-Length and S3 stores
// nothing, whether or not the server checks the payload hash.
func TestVerifiedBodyHoldsTheLastByte(t *testing.T) {
	c := randomBytes(3<<20 + 7)
	d := blobstore.FromBytes(blobstore.SHA256, c)
	const firstLen = 1 << 20
	// Each case is read three ways: big reads of a plain source, big
	// reads of a source giving one byte at a time, and one-byte reads.
	read := func(d blobstore.Digest, size int64, src []byte) (int64, error) {
		var n int64
		var err error
		for mode := range 3 {
			var r io.Reader = io.MultiReader(bytes.NewReader(src[:firstLen]), bytes.NewReader(src[firstLen:]))
			if mode == 1 {
				r = iotest.OneByteReader(r)
			}
			b := newVerifiedBody(d, sha256.New(), size, r)
			var out io.Reader = b
			if mode == 2 {
				out = iotest.OneByteReader(b)
			}
			var got bytes.Buffer
			n, err = io.Copy(&got, out)
			if err != nil && !errors.Is(b.failure(), err) {
				t.Errorf("mode %d: failure() = %v, Read failed with %v", mode, b.failure(), err)
			}
			if !bytes.HasPrefix(src, got.Bytes()) {
				t.Errorf("mode %d: handed over bytes that are not the source's", mode)
			}
		}
		return n, err
	}
	n, err := read(d, int64(len(c)), c)
	if err != nil || n != int64(len(c)) {
		t.Fatalf("the blob's own bytes: %d bytes, %v; want all %d", n, err, len(c))
	}
	other := append([]byte(nil), c...)
	other[len(other)-1] ^= 1
	longer := append(append([]byte(nil), c...), 'x')
	cases := []struct {
		name string
		size int64
		src  []byte
		want error
	}{
		{"last byte differs", int64(len(c)), other, blobstore.ErrDigestMismatch},
		{"one byte more than declared", int64(len(c)), longer, blobstore.ErrSizeMismatch},
		{"one byte less than declared", int64(len(c)) + 1, c, blobstore.ErrSizeMismatch},
		{"much shorter than declared", int64(len(c)) * 2, c, blobstore.ErrSizeMismatch},
	}
	for _, tc := range cases {
		n, err := read(d, tc.size, tc.src)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		if n >= tc.size {
			t.Errorf("%s: handed over %d of %d bytes: the request would be complete", tc.name, n, tc.size)
		}
	}
}

// TestServerChecksPayloadHash is the second guard of putStream, on the
// real server: a PUT signed with a payload hash its bytes do not have is
// refused, and nothing appears at the key.
func TestServerChecksPayloadHash(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	s := newStore(t, srv, bucket, "")
	c := randomBytes(6 << 20)
	wrong := blobstore.FromBytes(blobstore.SHA256, append([]byte("x"), c...))
	key := "some/key"
	_, err := s.client.PutObject(context.Background(), &awss3.PutObjectInput{
		Bucket: &s.bucket, Key: &key, Body: io.MultiReader(bytes.NewReader(c)), ContentLength: aws.Int64(int64(len(c))),
	}, withPayloadHash(wrong.Hex))
	if err == nil {
		t.Fatal("PUT with a wrong payload hash succeeded")
	}
	if _, err := s.head(context.Background(), key); statusOf(err) != 404 {
		t.Fatalf("after the refused PUT: HEAD says %v, want 404", err)
	}
	// The right hash, on a stream the SDK cannot read twice, goes through.
	right := blobstore.FromBytes(blobstore.SHA256, c)
	if _, err := s.client.PutObject(context.Background(), &awss3.PutObjectInput{
		Bucket: &s.bucket, Key: &key, Body: io.MultiReader(bytes.NewReader(c)), ContentLength: aws.Int64(int64(len(c))),
	}, withPayloadHash(right.Hex)); err != nil {
		t.Fatal(err)
	}
}

// TestPutStreamsOnePut: a sha256 Put of known size above a part is one
// PutObject, with no multipart upload (whose assembly is a second write
// on versitygw), and one with the wrong bytes leaves nothing behind.
func TestPutStreamsOnePut(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	s := newStore(t, srv, bucket, "")
	c := randomBytes(12<<20 + 3)
	d := blobstore.FromBytes(blobstore.SHA256, c)
	other := append([]byte("y"), c[1:]...)
	if _, err := s.Put(ctx(t), d, int64(len(other)), bytes.NewReader(other)); !errors.Is(err, blobstore.ErrDigestMismatch) {
		t.Fatalf("Put of other bytes: %v", err)
	}
	if objects, uploads := srv.Keys(t, bucket, ""); len(objects)+len(uploads) != 0 {
		t.Fatalf("after a refused Put: objects %q, uploads %q", objects, uploads)
	}
	var puts, parts int
	s.client = countCalls(s, &puts, &parts)
	if _, err := s.Put(ctx(t), d, int64(len(c)), bytes.NewReader(c)); err != nil {
		t.Fatal(err)
	}
	if puts != 1 || parts != 0 {
		t.Fatalf("Put: %d PutObject and %d UploadPart calls, want 1 and 0", puts, parts)
	}
	got, err := s.OpenRange(ctx(t), d, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	if b, _ := io.ReadAll(got); !bytes.Equal(b, c) {
		t.Fatal("the stored blob differs")
	}
}

// countCalls is s's client again, counting PutObject and UploadPart calls.
func countCalls(s *Store, puts, parts *int) *awss3.Client {
	opts := s.client.Options()
	opts.APIOptions = append(opts.APIOptions, func(st *middleware.Stack) error {
		return st.Initialize.Add(middleware.InitializeMiddlewareFunc("countCalls",
			func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
				switch middleware.GetOperationName(ctx) {
				case "PutObject":
					*puts++
				case "UploadPart":
					*parts++
				}
				return next.HandleInitialize(ctx, in)
			}), middleware.Before)
	})
	return awss3.New(opts)
}

// TestWriteTo: io.Copy of an open blob (the registry's whole-blob GET)
// goes through WriteTo, from the start or from where a Seek left it, and
// an object cut shorter than its size is an error, not a short blob.
func TestWriteTo(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	s := newStore(t, srv, bucket, "")
	c := randomBytes(3<<20 + 11)
	d := blobstore.FromBytes(blobstore.SHA256, c)
	if _, err := s.Put(ctx(t), d, int64(len(c)), bytes.NewReader(c)); err != nil {
		t.Fatal(err)
	}
	for _, from := range []int64{0, 1, 2 << 20, int64(len(c)) - 1, int64(len(c))} {
		b, err := s.Open(ctx(t), d)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Seek(from, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		n, err := b.(io.WriterTo).WriteTo(&got)
		b.Close()
		if err != nil || n != int64(len(c))-from || !bytes.Equal(got.Bytes(), c[from:]) {
			t.Fatalf("WriteTo from %d: %d bytes, %v; want the %d bytes from there", from, n, err, int64(len(c))-from)
		}
	}
	b, err := s.Open(ctx(t), d)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := s.putObject(ctx(t), s.blobKey(d), c[:1<<20]); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, b); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("io.Copy of an object cut short: %v, want io.ErrUnexpectedEOF", err)
	}
}

// TestVerifiedBodyClosed: once its request ended, the body hands out
// nothing more (the transport may read on after an early answer, and the
// request's body is the caller's again by then).
func TestVerifiedBodyClosed(t *testing.T) {
	c := randomBytes(1 << 20)
	d := blobstore.FromBytes(blobstore.SHA256, c)
	b := newVerifiedBody(d, sha256.New(), int64(len(c)), bytes.NewReader(c))
	p := make([]byte, 10)
	if n, err := b.Read(p); n == 0 || err != nil {
		t.Fatalf("first Read: %d, %v", n, err)
	}
	b.close()
	if n, err := b.Read(p); n != 0 || err == nil {
		t.Fatalf("Read after close: %d bytes, %v; want none and an error", n, err)
	}
}
