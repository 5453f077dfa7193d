package s3

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go/middleware"
	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/internal/backend"
)

// maxSinglePut is the largest object one PutObject may write (S3's limit).
const maxSinglePut = 5 << 30

// putStream writes a sha256 blob of known size with one streaming
// PutObject straight to its key: one write on the server, where a
// multipart upload costs the parts and then their assembly (versitygw's
// posix backend copies every part into the object at completion).
//
// Nothing unverified becomes visible, by two guards. The body hands the
// request its last byte only after every byte before it was hashed and
// matched d and r was seen to end; otherwise it fails, the request is cut
// short of its Content-Length, and S3 stores nothing. And the request is
// signed with d's hex as its payload hash (x-amz-content-sha256, which for
// a sha256 blob is the same number), so S3 itself refuses the object if
// the bytes it got hash otherwise; this is SigV4's own check, which every
// S3-compatible server makes, unlike the newer x-amz-checksum headers.
func (s *Store) putStream(ctx context.Context, d blobstore.Digest, size int64, r io.Reader, h hash.Hash) (blobstore.Info, error) {
	start := time.Now()
	body := newVerifiedBody(d, h, size, r)
	key := s.blobKey(d)
	// Patient: the body arrives at the client's pace, and the server may
	// work on the whole blob after its last byte.
	_, err := s.client.PutObject(patient(ctx), &awss3.PutObjectInput{
		Bucket: &s.bucket, Key: &key, Body: body, ContentLength: aws.Int64(size),
	}, withPayloadHash(d.Hex))
	berr := body.failure()
	body.close() // no late Read may touch r, which the caller owns again
	if berr != nil {
		return blobstore.Info{}, berr
	}
	if err != nil {
		return blobstore.Info{}, blobErr("put", d, err)
	}
	s.log.Debug("s3 put", zap.String("digest", d.String()), zap.Int64("size", size), zap.Duration("put", time.Since(start)))
	return blobstore.Info{Digest: d, Size: size}, nil
}

// withPayloadHash signs a request with hex as the SHA-256 of its body
// instead of reading the body to compute it (which a stream does not
// allow). The signer reads the hash from the stack's context, which is
// cleared as an operation starts, so it is set by a middleware inside.
func withPayloadHash(hex string) func(*awss3.Options) {
	return func(o *awss3.Options) {
		o.APIOptions = append(o.APIOptions, func(st *middleware.Stack) error {
			return st.Build.Add(middleware.BuildMiddlewareFunc("caddyOCIPayloadHash",
				func(ctx context.Context, in middleware.BuildInput, next middleware.BuildHandler) (middleware.BuildOutput, middleware.Metadata, error) {
					return next.HandleBuild(v4.SetPayloadHash(ctx, hex), in)
				}), middleware.After)
		})
	}
}

// verifiedBody is a PutObject body of exactly size bytes, those of r,
// hashed as they pass. It hands over every byte but the last
// one it read, and that one only once r ended, size bytes long, hashing to
// d. So a request of other bytes is always cut short of its
// Content-Length, and the bytes the server did get are never all of r:
// even a server that keeps a cut-off body (versitygw does, if it hashes to
// the signed payload hash) stores nothing, since a strict prefix of the
// bytes does not hash to d unless those bytes are d's own.
//
// It is read by the HTTP transport's goroutine while the caller waits,
// and the caller asks failure afterwards, hence the lock.
type verifiedBody struct {
	d    blobstore.Digest
	h    hash.Hash
	size int64
	r    io.Reader

	mu       sync.Mutex
	read     int64 // bytes read
	carry    byte  // the last byte read, not handed over yet
	hasCarry bool
	eof      bool  // r ended
	done     bool  // the carry went: the body ended
	err      error // why the body failed, sticky
}

func newVerifiedBody(d blobstore.Digest, h hash.Hash, size int64, r io.Reader) *verifiedBody {
	return &verifiedBody{d: d, h: h, size: size, r: r}
}

// errBodyClosed: the transport read the body after its request ended
// (it may go on writing a body the server already answered).
var errBodyClosed = errors.New("s3: put body read after its request ended")

// close ends the body: a Read from now on fails without touching r,
// which the caller owns again.
func (b *verifiedBody) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil && !b.done {
		b.err = errBodyClosed
	}
}

func (b *verifiedBody) failure() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

func (b *verifiedBody) fail(err error) (int, error) {
	b.err = err
	return 0, err
}

func (b *verifiedBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.err != nil:
		return 0, b.err
	case b.done:
		return 0, io.EOF
	case len(p) == 0:
		return 0, nil
	}
	for {
		if b.eof {
			return b.finish(p)
		}
		if b.hasCarry && len(p) == 1 { // no room after the carry: swap it
			var one [1]byte
			n, err := b.next(one[:])
			if err != nil && err != io.EOF {
				return b.fail(err)
			}
			if n == 1 {
				p[0], b.carry = b.carry, one[0]
				return 1, nil
			}
			continue
		}
		off := 0
		if b.hasCarry {
			p[0], off = b.carry, 1
		}
		n, err := b.next(p[off:])
		if err != nil && err != io.EOF {
			return b.fail(err)
		}
		avail := off + n
		b.hasCarry = false
		switch {
		case b.eof:
			// Every byte read: they all go, once they check out.
			if err := b.check(); err != nil {
				return b.fail(err)
			}
			b.done = true
			if avail == 0 {
				return 0, io.EOF
			}
			return avail, nil
		case avail >= 2:
			b.carry, b.hasCarry = p[avail-1], true
			return avail - 1, nil
		case avail == 1:
			b.carry, b.hasCarry = p[0], true
		}
	}
}

// finish ends the body once r ended: the carry goes, if the bytes check
// out.
func (b *verifiedBody) finish(p []byte) (int, error) {
	if err := b.check(); err != nil {
		return b.fail(err)
	}
	b.done = true
	if !b.hasCarry {
		return 0, io.EOF
	}
	p[0], b.hasCarry = b.carry, false
	return 1, nil
}

// check is whether the bytes read are the blob.
func (b *verifiedBody) check() error {
	if b.read != b.size {
		return fmt.Errorf("%w: declared %d, got %d bytes", blobstore.ErrSizeMismatch, b.size, b.read)
	}
	return backend.Verify(b.d, -1, 0, b.h)
}

// next reads from r into p, no more than one byte past size (which tells
// "too long"), hashing what belongs to the blob. Its error is io.EOF when
// r ended, or r's; a body too long is b.err already.
func (b *verifiedBody) next(p []byte) (int, error) {
	if room := b.size + 1 - b.read; int64(len(p)) > room {
		p = p[:room]
	}
	n, err := b.r.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	b.read += int64(n)
	if b.read > b.size {
		b.err = fmt.Errorf("%w: the body is longer than the %d bytes declared", blobstore.ErrSizeMismatch, b.size)
		return 0, b.err
	}
	b.h.Write(p[:n])
	return n, err
}
