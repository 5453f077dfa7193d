// Package s3 keeps blobs in an S3-compatible object store (AWS S3, Ceph
// RGW, SeaweedFS, versitygw, R2, ...). Keys:
//
//	<prefix>blobs/<alg>/<2 hex>/<hex>       verified blobs, written only whole
//	<prefix>links/<alg>/<2 hex>/<hex>       a verified blob whose bytes are a data object
//	<prefix>data/<2 hex>/<id>[.<alg>.<hex>] a session's completed bytes (and its marker)
//	<prefix>uploads/<id>/tail-<name>        a session's bytes after its last part
//
// A blob key never holds unverified bytes: a Put with a known digest
// streams in one PUT whose last byte waits for the hash to match (or, for
// sha512, unknown sizes and above 5 GiB, into a multipart upload at the
// blob key completed only after it did). A session (digest unknown until
// its commit) writes a multipart upload at data/, and its commit, once
// verified, writes a link to it (links.go) rather than copying the bytes.
// Nothing here lists the bucket on a read or a write: reads, stats and
// deletes each address a key or two; ending a session lists its own
// prefixes, and deleting a linked blob its data's.
package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"
	"github.com/caddy-oci/caddy-oci/internal/outbound"
	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/internal/backend"
	"github.com/caddy-oci/caddy-oci/cache/internal/blobfile"
)

// Limits S3 sets on multipart uploads and copies.
const (
	minPartSize     = 5 << 20 // every part but the last
	maxPartSize     = 5 << 30
	maxParts        = 10000
	defaultPartSize = 8 << 20
)

// Config says where the blobs go.
type Config struct {
	// Bucket holds the blobs. It must exist.
	Bucket string `json:"bucket"`
	// Endpoint is the S3 server's URL (https://s3.example.internal).
	// Empty: AWS S3, located from Region.
	Endpoint string `json:"endpoint,omitempty"`
	// Region of the bucket. Empty: from the AWS environment, else
	// us-east-1 (which most S3-compatible servers accept).
	Region string `json:"region,omitempty"`
	// Prefix goes before every key, so one bucket can hold several
	// registries (caddy-oci/). Letters, digits and ". _ - /" only.
	Prefix string `json:"prefix,omitempty"`
	// AccessKey and SecretKey sign the requests. Empty: the AWS
	// environment's credentials (environment variables, shared config,
	// instance role).
	AccessKey string `json:"access_key,omitempty"`
	SecretKey string `json:"secret_key,omitempty"`
	// PathStyle addresses the bucket as <endpoint>/<bucket> instead of
	// <bucket>.<endpoint>; most self-hosted S3 servers need it.
	PathStyle bool `json:"path_style,omitempty"`
	// PartSize is the size of the parts uploads are cut into; each
	// upload in flight holds three (two uploading, one filling). At least 5 MiB (S3's minimum);
	// default 8 MiB. A blob has at most 10,000 parts, so this also bounds
	// the largest blob (8 MiB: 78 GiB).
	PartSize int64 `json:"part_size,omitempty"`
}

// Store is a blobstore.Store on one bucket. Safe for concurrent use.
type Store struct {
	client   *awss3.Client
	bucket   string
	prefix   string
	partSize int64
	log      *zap.Logger
	links    *linkCache
	// noChecksums: the server was found not to check part checksums
	// (checksums.go), so parts are signed with their SHA-256.
	noChecksums atomic.Bool
	// puts are the multipart uploads of Puts in flight (UndoInFlight).
	puts blobfile.InFlight
	// beforeSend, for tests, runs between a fenced delete's presigning
	// and its sending: where a stopped process would be stopped.
	beforeSend func()
}

// UndoInFlight aborts the multipart uploads of the Puts in flight, for
// the close of the store (see blobfile.InFlight), and returns how many
// there were. Those Puts fail; a session's uploads are not among them.
func (s *Store) UndoInFlight() int { return s.puts.UndoAll() }

// New checks cfg and returns a Store. It does not contact the server.
func New(ctx context.Context, cfg Config, log *zap.Logger) (*Store, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if err := checkBucket(cfg.Bucket); err != nil {
		return nil, err
	}
	prefix, err := cleanPrefix(cfg.Prefix)
	if err != nil {
		return nil, err
	}
	if (cfg.AccessKey == "") != (cfg.SecretKey == "") {
		return nil, errors.New("s3: access_key and secret_key go together")
	}
	partSize := cfg.PartSize
	if partSize == 0 {
		partSize = defaultPartSize
	}
	if partSize < minPartSize || partSize > maxPartSize {
		return nil, fmt.Errorf("s3: part_size %d is outside [%d, %d]", partSize, minPartSize, maxPartSize)
	}
	opts := []func(*config.LoadOptions) error{
		config.WithHTTPClient(newHTTPClient()),
		// S3-compatible servers reject or mangle the checksums the SDK
		// would otherwise add to every request.
		config.WithRequestChecksumCalculation(aws.RequestChecksumCalculationWhenRequired),
		config.WithResponseChecksumValidation(aws.ResponseChecksumValidationWhenRequired),
	}
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.AccessKey != "" {
		opts = append(opts, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(cfg.AccessKey, cfg.SecretKey, "")))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("s3: %w", err)
	}
	if awsCfg.Region == "" {
		awsCfg.Region = "us-east-1"
	}
	base := awsCfg.Retryer
	awsCfg.Retryer = func() aws.Retryer {
		// No client-side retry quota: the SDK's default spends a token
		// bucket on retries and, once a run of failures emptied it (a
		// flaky network, an outage), fails every call at its first
		// error until successes fill it again, so transient errors
		// reached clients as 503s after S3 was well. Each call's
		// attempts are bounded anyway (three, and boundCalls' time).
		var r aws.Retryer = retry.NewStandard(func(o *retry.StandardOptions) { o.RateLimiter = ratelimit.None })
		if base != nil {
			r = base()
		}
		// versitygw's posix backend removes a folder once its last object
		// goes, parents included; a write into a sibling folder that
		// finds its parent gone meanwhile fails with this code (409), and
		// succeeds when sent again. Our keys never make an object of a
		// folder, so the code means nothing else here.
		return retry.AddWithErrorCodes(r, "ExistingObjectIsDirectory")
	}
	var endpoint *string
	if cfg.Endpoint != "" {
		if err := checkEndpoint(cfg.Endpoint); err != nil {
			return nil, err
		}
		endpoint = aws.String(cfg.Endpoint)
	}
	// A patient call's watch asks the bucket whether the server is
	// alive; the client it asks with is the one made here. Any answer
	// says so, an error status too (a throttling server's 503 SlowDown,
	// a 403 for a key without s3:ListBucket): one attempt, not the
	// SDK's three, whose answers and backoff added up past the probe's
	// bound on a busy server and failed a good call.
	var client *awss3.Client
	probe := func(ctx context.Context) error {
		_, err := client.HeadBucket(ctx, &awss3.HeadBucketInput{Bucket: aws.String(cfg.Bucket)},
			func(o *awss3.Options) { o.RetryMaxAttempts = 1 })
		return err
	}
	// One middleware, and one prober, for every call of the client: the
	// stack is built anew for each call from APIOptions.
	bound := middleware.InitializeMiddlewareFunc("caddy-oci/bound-calls", boundCalls(newProber(probe)))
	client = awss3.NewFromConfig(awsCfg, func(o *awss3.Options) {
		o.BaseEndpoint = endpoint
		o.UsePathStyle = cfg.PathStyle
		o.APIOptions = append(o.APIOptions, func(st *middleware.Stack) error {
			if err := st.Initialize.Add(middleware.InitializeMiddlewareFunc("caddy-oci/storage-full", markStorageFull), middleware.After); err != nil {
				return err
			}
			return st.Initialize.Add(bound, middleware.After)
		})
	})
	s := &Store{
		client:   client,
		bucket:   cfg.Bucket,
		prefix:   prefix,
		partSize: partSize,
		log:      log,
		links:    newLinkCache(linkCacheSize),
	}
	// Upload sessions fill their parts there: a folder they cannot write
	// fails now, not at the first chunked push.
	f, err := newPartFile("")
	if err != nil {
		return nil, fmt.Errorf("%w (upload sessions fill their parts in the temporary folder; set TMPDIR)", err)
	}
	f.close()
	return s, nil
}

// newHTTPClient bounds everything but the body: a blob may stream for
// hours, but a server that does not connect or answer is given up on. The
// SDK's buildable client, not an http.Client, so the AWS environment can
// still add its CA bundle.
func newHTTPClient() *awshttp.BuildableClient {
	return awshttp.NewBuildableClient().
		WithDialerOptions(func(d *net.Dialer) {
			d.Timeout = 10 * time.Second
			d.KeepAlive = 30 * time.Second
		}).
		WithTransportOptions(func(tr *http.Transport) {
			tr.TLSHandshakeTimeout = 10 * time.Second
			// CompleteMultipartUpload works before it answers.
			tr.ResponseHeaderTimeout = 2 * time.Minute
			tr.MaxResponseHeaderBytes = outbound.MaxResponseHeaderBytes
			tr.ExpectContinueTimeout = time.Second
			tr.MaxIdleConnsPerHost = 64
			tr.IdleConnTimeout = 90 * time.Second
			tr.DialContext = stallDialer(tr.DialContext)
		})
}

// checkBucket accepts S3's bucket name rules, loosely: 3 to 63 of
// lower-case letters, digits, '.' and '-'.
func checkBucket(b string) error {
	if len(b) < 3 || len(b) > 63 {
		return fmt.Errorf("s3: bucket %q: 3 to 63 characters", b)
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-') {
			return fmt.Errorf("s3: bucket %q: only a-z, 0-9, '.' and '-'", b)
		}
	}
	return nil
}

// cleanPrefix returns p ending in '/' (or empty). Its characters are ones
// that need no escaping anywhere a key goes (a copy source is a URL path),
// and it has no empty, "." or ".." segment that a server might resolve.
func cleanPrefix(p string) (string, error) {
	if p == "" {
		return "", nil
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' || c == '/') {
			return "", fmt.Errorf("s3: prefix %q: only letters, digits, '.', '_', '-' and '/'", p)
		}
	}
	for _, seg := range strings.Split(strings.TrimSuffix(p, "/"), "/") {
		if seg == "" || seg == "." || seg == ".." {
			return "", fmt.Errorf("s3: prefix %q: empty, '.' or '..' segment", p)
		}
	}
	if !strings.HasSuffix(p, "/") {
		p += "/"
	}
	return p, nil
}

// checkEndpoint accepts an http or https URL with a host and nothing that
// would end up in every request by accident (credentials, query).
func checkEndpoint(e string) error {
	u, err := url.Parse(e)
	if err != nil {
		return fmt.Errorf("s3: endpoint: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("s3: endpoint %q: want http(s)://host[:port][/path]", e)
	}
	return nil
}

func (s *Store) blobKey(d blobstore.Digest) string {
	return s.prefix + "blobs/" + string(d.Algorithm) + "/" + d.Hex[:2] + "/" + d.Hex
}

// Stat implements blobstore.Reader: one HEAD for a plain blob; a linked
// one costs a HEAD of its data more (and a GET of its link when it is not
// cached), and so does an absent one (a GET of the link).
func (s *Store) Stat(ctx context.Context, d blobstore.Digest) (blobstore.Info, error) {
	if err := d.Validate(); err != nil {
		return blobstore.Info{}, err
	}
	loc, err := s.locate(ctx, d)
	if err != nil {
		return blobstore.Info{}, err
	}
	return blobstore.Info{Digest: d, Size: loc.size}, nil
}

func (s *Store) head(ctx context.Context, key string) (int64, error) {
	out, err := s.client.HeadObject(ctx, &awss3.HeadObjectInput{Bucket: &s.bucket, Key: &key})
	if err != nil {
		return 0, err
	}
	return aws.ToInt64(out.ContentLength), nil
}

// Open implements blobstore.Reader: a Stat for the size and the key
// (the blob key or the linked data), then one ranged GET from wherever the
// reader is when it first reads after a Seek.
func (s *Store) Open(ctx context.Context, d blobstore.Digest) (blobstore.Blob, error) {
	if err := d.Validate(); err != nil {
		return nil, err
	}
	loc, err := s.locate(ctx, d)
	if err != nil {
		return nil, err
	}
	return &objectReader{ctx: ctx, s: s, key: loc.key, size: loc.size}, nil
}

// OpenRange implements blobstore.Reader with one ranged GET of the blob
// key, and for a linked blob one of its data (after a GET of its link
// when it is not cached).
func (s *Store) OpenRange(ctx context.Context, d blobstore.Digest, offset, length int64) (io.ReadCloser, error) {
	if err := d.Validate(); err != nil {
		return nil, err
	}
	if offset < 0 || length == 0 || length < -1 {
		return nil, fmt.Errorf("%w: offset %d, length %d", blobstore.ErrRange, offset, length)
	}
	rc, err := s.getRange(ctx, d, s.blobKey(d), offset, length)
	if statusOf(err) != http.StatusNotFound {
		return rc, blobErr("read", d, err)
	}
	err = s.viaLink(ctx, d, func(l link) error {
		var err error
		rc, err = s.getRange(ctx, d, s.dataKey(l.Data), offset, length)
		return err
	})
	return rc, err
}

// getRange GETs length bytes from offset of key, blob d's bytes. Errors
// are S3's as they came, or ErrRange.
func (s *Store) getRange(ctx context.Context, d blobstore.Digest, key string, offset, length int64) (io.ReadCloser, error) {
	rng := "bytes=" + strconv.FormatInt(offset, 10) + "-"
	if length > 0 {
		rng += strconv.FormatInt(offset+length-1, 10)
	}
	out, err := s.client.GetObject(ctx, &awss3.GetObjectInput{Bucket: &s.bucket, Key: &key, Range: &rng})
	if err != nil {
		if statusOf(err) == http.StatusRequestedRangeNotSatisfiable {
			return nil, fmt.Errorf("%w: %s of %s", blobstore.ErrRange, rng, d)
		}
		return nil, err
	}
	// S3 cuts a range that runs past the end; the contract refuses it.
	size, ok := totalFromContentRange(aws.ToString(out.ContentRange))
	if !ok {
		// A server that ignored the range sent the whole object: usable
		// from offset 0 only.
		size = aws.ToInt64(out.ContentLength)
		if offset > 0 && offset < size {
			out.Body.Close()
			return nil, fmt.Errorf("s3: read %s: the server ignored %s", d, rng)
		}
	}
	if offset >= size || length > 0 && offset+length > size {
		out.Body.Close()
		return nil, fmt.Errorf("%w: %s of %s (%d bytes)", blobstore.ErrRange, rng, d, size)
	}
	return out.Body, nil
}

// totalFromContentRange returns the complete length from "bytes a-b/total".
func totalFromContentRange(cr string) (int64, bool) {
	_, total, ok := strings.Cut(cr, "/")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(total, 10, 64)
	return n, err == nil && n >= 0
}

// Put implements blobstore.Putter. A blob of known size up to
// maxBufferedPut is hashed in memory and written with one PUT once
// verified; a larger sha256 blob of known size up to 5 GiB streams in one
// PUT whose last byte waits for the verification (putStream); any other
// (unknown size, sha512) fills a part in a local file first: one that fits is
// written as the small ones, a larger one streams into a multipart upload
// at its own key, completed only once verified (until then S3 shows
// nothing at the key).
func (s *Store) Put(ctx context.Context, d blobstore.Digest, size int64, r io.Reader) (blobstore.Info, error) {
	if err := d.Validate(); err != nil {
		return blobstore.Info{}, err
	}
	if size > s.partSize*maxParts {
		return blobstore.Info{}, fmt.Errorf("%w: %d bytes, the limit is %d", blobstore.ErrTooLarge, size, s.partSize*maxParts)
	}
	if size >= 0 {
		r = io.LimitReader(r, size+1) // one byte more tells "too long"
	}
	h := d.Algorithm.New()
	switch {
	case size >= 0 && size <= maxBufferedPut:
		return s.putSmall(ctx, d, size, r, h)
	case d.Algorithm == blobstore.SHA256 && size > 0 && size <= maxSinglePut:
		// Streamed from its first byte: a part buffered first would hold
		// partSize of memory for every push in flight, however slowly
		// its client sends (200 stalled pushes held 1.6 GiB).
		return s.putStream(ctx, d, size, r, h)
	}
	// Unknown size (or sha512, or over 5 GiB): the first part fills a
	// local file (partfile.go), then goes as the whole blob or starts a
	// multipart upload.
	files := &partFiles{}
	first, err := files.take()
	if err != nil {
		return blobstore.Info{}, err
	}
	n, err := first.fill(r, h, s.partSize)
	if err == nil {
		return s.putMultipart(ctx, d, size, r, h, files, first) // which closes files
	}
	defer files.close()
	if err != io.EOF {
		return blobstore.Info{}, fmt.Errorf("s3: put %s: %w", d, err)
	}
	if err := backend.Verify(d, size, n, h); err != nil {
		return blobstore.Info{}, err
	}
	if err := s.putObjectFrom(ctx, s.blobKey(d), first.body(), first.size); err != nil {
		return blobstore.Info{}, blobErr("put", d, err)
	}
	return blobstore.Info{Digest: d, Size: n}, nil
}

// maxBufferedPut is the largest blob of known size read whole into memory
// and written with one PUT once verified; a larger one streams.
const maxBufferedPut = 1 << 20

// putSmall reads a blob of known size (at most maxBufferedPut, r limited
// to size+1 bytes) into a buffer of its size, verifies it and writes it
// with one PUT.
func (s *Store) putSmall(ctx context.Context, d blobstore.Digest, size int64, r io.Reader, h hash.Hash) (blobstore.Info, error) {
	b, n, err := fill(make([]byte, 0, size+1), r, h)
	switch {
	case err == nil: // size+1 bytes arrived
		return blobstore.Info{}, fmt.Errorf("%w: the body is longer than the %d bytes declared", blobstore.ErrSizeMismatch, size)
	case err != io.EOF:
		return blobstore.Info{}, fmt.Errorf("s3: put %s: %w", d, err)
	}
	if err := backend.Verify(d, size, n, h); err != nil {
		return blobstore.Info{}, err
	}
	if err := s.putObject(ctx, s.blobKey(d), b); err != nil {
		return blobstore.Info{}, blobErr("put", d, err)
	}
	return blobstore.Info{Digest: d, Size: n}, nil
}

// putMultipart streams a blob into a multipart upload at its key, first
// (a full part, in one of files) and then the rest of r, and completes
// the upload only once the bytes are verified. It closes files.
func (s *Store) putMultipart(ctx context.Context, d blobstore.Digest, size int64, r io.Reader, h hash.Hash, files *partFiles, first *partFile) (_ blobstore.Info, err error) {
	start := time.Now()
	key := s.blobKey(d)
	uploadID, crc, err := s.createUpload(ctx, key)
	if err != nil {
		files.close()
		return blobstore.Info{}, blobErr("put", d, err)
	}
	// Aborted by UndoInFlight too: a graceful stop ends the process
	// while this may still wait for the body, before the abort below.
	defer s.puts.Add(func() { s.abort(context.Background(), key, uploadID) })()
	completed := false
	// Parts go to S3 in the background while the next one fills.
	pw := s.newPartWriter(ctx, key, uploadID, crc, 1)
	defer func() {
		pw.wait() // no upload reads a file once it returns
		files.close()
		switch {
		case completed:
		case stalled(err):
			// The server gave a call no answer: the abort would wait
			// its own bound out before the caller's 503. It goes on
			// behind the caller (bounded as every abort is), and lands
			// once the server continues; the leftovers sweep finds an
			// upload it could not drop.
			go s.abort(ctx, key, uploadID)
		default:
			s.abort(ctx, key, uploadID)
		}
	}()
	fail := func(err error) (blobstore.Info, error) {
		pw.wait()
		return blobstore.Info{}, err
	}
	total := int64(0)
	cur := first
	for queued := 0; ; {
		if cur.size > 0 {
			if queued == maxParts {
				return fail(fmt.Errorf("%w: more than %d parts of %d bytes", blobstore.ErrTooLarge, maxParts, s.partSize))
			}
			total += cur.size
			if err := pw.send(cur, files.gone(cur)); err != nil {
				return fail(blobErr("put", d, err))
			}
			queued++
			if cur, err = files.take(); err != nil {
				return fail(err)
			}
		}
		_, rerr := cur.fill(r, h, s.partSize)
		if rerr == io.EOF {
			if cur.size == 0 {
				break
			}
			continue // upload the last part, then fill sees EOF again
		}
		if rerr != nil {
			return fail(fmt.Errorf("s3: put %s: %w", d, rerr))
		}
	}
	parts, err := pw.wait()
	if err != nil {
		return blobstore.Info{}, blobErr("put", d, err)
	}
	if err := backend.Verify(d, size, total, h); err != nil {
		return blobstore.Info{}, err
	}
	took := time.Since(start)
	if err := s.complete(ctx, key, uploadID, parts); err != nil {
		return blobstore.Info{}, blobErr("put", d, err)
	}
	completed = true
	s.log.Debug("s3 multipart put", zap.String("digest", d.String()), zap.Int64("size", total),
		zap.Duration("parts", took), zap.Duration("complete", time.Since(start)-took))
	return blobstore.Info{Digest: d, Size: total}, nil
}

// Delete implements blobstore.Deleter: the blob key, and the link with
// the data it names. The link goes first, so no reader ever finds it
// naming data that is gone; a crash before the data goes leaves data no
// link names, which the sweep frees (Leftovers). S3 answers a DELETE of a
// missing key with success, which is the contract.
func (s *Store) Delete(ctx context.Context, d blobstore.Digest) error {
	if err := d.Validate(); err != nil {
		return err
	}
	if err := s.deleteObject(ctx, s.blobKey(d)); err != nil {
		return blobErr("delete", d, err)
	}
	s.links.drop(d)
	l, err := s.readLink(ctx, d)
	if errors.Is(err, blobstore.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := s.deleteObject(ctx, s.linkKey(d)); err != nil {
		return blobErr("delete", d, err)
	}
	s.links.drop(d)
	if err := s.releaseData(ctx, l.Data); err != nil {
		return blobErr("delete", d, err)
	}
	return nil
}

// fill reads from r into buf up to its capacity, hashing what it reads. It
// returns io.EOF once r has ended (with or without bytes).
func fill(buf []byte, r io.Reader, h hash.Hash) ([]byte, int64, error) {
	start := len(buf)
	n, err := io.ReadFull(r, buf[start:cap(buf)])
	buf = buf[:start+n]
	h.Write(buf[start:])
	if err == io.ErrUnexpectedEOF {
		err = io.EOF
	}
	return buf, int64(n), err
}

// putObjectFrom writes size bytes of body at key.
func (s *Store) putObjectFrom(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	_, err := s.client.PutObject(ctx, &awss3.PutObjectInput{
		Bucket: &s.bucket, Key: &key, Body: body, ContentLength: aws.Int64(size),
	})
	return err
}

func (s *Store) putObject(ctx context.Context, key string, b []byte) error {
	return s.putObjectFrom(ctx, key, bytes.NewReader(b), int64(len(b)))
}

// abort drops a multipart upload, even when ctx is done (the request that
// failed may be the reason), logging what it cannot do: the bucket's
// lifecycle rule for incomplete uploads is the backstop.
//
// A part the server was still receiving when the upload failed (its
// client gave up, the server had the bytes) may complete after the
// abort, and completing brings the upload back: versitygw re-creates it,
// and AWS documents that an abort may have to be repeated while parts
// are in progress. Seen with a server stopped mid-push: the last part
// landed after the abort and the upload stayed until the leftovers
// sweep. So the upload is looked for again a few times after the abort
// (abortAgain), behind the caller.
func (s *Store) abort(ctx context.Context, key, uploadID string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	_, err := s.client.AbortMultipartUpload(ctx, &awss3.AbortMultipartUploadInput{Bucket: &s.bucket, Key: &key, UploadId: &uploadID})
	if err != nil && statusOf(err) != http.StatusNotFound {
		s.log.Warn("abort multipart upload", zap.String("key", key), zap.Error(err))
		return
	}
	go s.abortAgain(key, uploadID)
}

// abortLooks are the delays after an abort at which abortAgain looks for
// the upload once more: a part in flight lands within moments of the
// server taking it up again.
var abortLooks = []time.Duration{time.Second, 2 * time.Second, 4 * time.Second}

// abortAgain aborts key's upload uploadID again each time it finds it
// back (see abort). It logs nothing: what it cannot do is left to the
// leftovers sweep, and it may outlive the caller's logger.
func (s *Store) abortAgain(key, uploadID string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, d := range abortLooks {
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
		_, err := s.client.ListParts(ctx, &awss3.ListPartsInput{Bucket: &s.bucket, Key: &key, UploadId: &uploadID, MaxParts: aws.Int32(1)})
		if err != nil {
			return // gone (NoSuchUpload), or the server cannot say
		}
		if _, err := s.client.AbortMultipartUpload(ctx, &awss3.AbortMultipartUploadInput{Bucket: &s.bucket, Key: &key, UploadId: &uploadID}); err != nil {
			return
		}
	}
}

// statusOf is the HTTP status of an S3 error, 0 if there was no answer.
func statusOf(err error) int {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

// markStorageFull makes every call's "no room" answer a
// blobstore.ErrStorageFull (the client's 507), whichever write of a
// push, chunk or fill met it; the S3 error stays in the chain.
func markStorageFull(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
	out, md, err := next.HandleInitialize(ctx, in)
	if err != nil && storageFull(err) {
		err = fmt.Errorf("%w: %w", blobstore.ErrStorageFull, err)
	}
	return out, md, err
}

// storageFull: the server has no room for the bytes. 507 is what
// versitygw (ENOSPC on its filesystem) and MinIO (XMinioStorageFull)
// answer; QuotaExceeded is Ceph RGW's bucket or user quota, the object
// store's EDQUOT.
func storageFull(err error) bool {
	if statusOf(err) == http.StatusInsufficientStorage {
		return true
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "InsufficientStorage", "XMinioStorageFull", "QuotaExceeded":
			return true
		}
	}
	return false
}

// blobErr turns an S3 error about blob d into the contract's.
func blobErr(op string, d blobstore.Digest, err error) error {
	if err == nil {
		return nil
	}
	if statusOf(err) == http.StatusNotFound {
		return fmt.Errorf("%w: %s", blobstore.ErrNotFound, d)
	}
	return fmt.Errorf("s3: %s %s: %w", op, d, err)
}

var _ blobstore.Store = (*Store)(nil)
