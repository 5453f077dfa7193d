package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"syscall"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
)

// OpenRecorded implements blobstore.RecordedOpener: no request until the
// first Read, whose one GET both checks that the object is there and is
// as long as the caller's record says, and brings the bytes. Open spends a
// HEAD on learning what the record already says.
func (s *Store) OpenRecorded(ctx context.Context, d blobstore.Digest, size int64) (blobstore.Blob, error) {
	if err := d.Validate(); err != nil {
		return nil, err
	}
	if size < 0 {
		return nil, fmt.Errorf("s3: open %s: recorded size %d", d, size)
	}
	return &objectReader{ctx: ctx, s: s, key: s.blobKey(d), size: size, linked: d}, nil
}

// objectReader reads an object as an io.ReadSeeker. A Seek costs nothing;
// the first Read after it starts one GET from there to the end (unless
// the GET already running is there), so http.ServeContent's "seek to the
// end for the size, seek back to the start, read" is a single request.
type objectReader struct {
	ctx     context.Context
	s       *Store
	key     string
	size    int64
	pos     int64
	body    io.ReadCloser // nil until a Read needs it
	bodyPos int64         // where body's next byte is
	// linked: the blob whose link (links.go) the first GET follows when
	// key, its plain key, is absent: a reader opened from the metadata's
	// record alone has not asked which form the blob has.
	linked blobstore.Digest
	// resumes counts the GETs sent again after a cut body (resume).
	resumes int
}

func (r *objectReader) Size() int64 { return r.size }

// Start implements blobstore.Starter: the GET a Read would send, now.
func (r *objectReader) Start() error {
	if r.pos >= r.size {
		return nil
	}
	return r.open()
}

// Check implements blobstore.Checker: a HEAD of the object (of its
// link's data when the blob is stored linked), no bytes.
func (r *objectReader) Check() error {
	var size int64
	var err error
	if r.linked.Hex != "" {
		var loc location
		loc, err = r.s.locate(r.ctx, r.linked)
		size = loc.size
	} else if size, err = r.s.head(r.ctx, r.key); statusOf(err) == http.StatusNotFound {
		err = blobstore.ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("s3: check %s: %w", r.key, err)
	}
	if size != r.size {
		// As the GET's open() finds it: not the blob's bytes.
		return fmt.Errorf("s3: check %s: %w: the object is %d bytes, the blob %d", r.key, blobstore.ErrSizeMismatch, size, r.size)
	}
	return nil
}

func (r *objectReader) Read(p []byte) (int, error) {
	if r.pos >= r.size {
		return 0, io.EOF
	}
	if err := r.open(); err != nil {
		return 0, err
	}
	n, err := r.body.Read(p)
	r.pos += int64(n)
	r.bodyPos = r.pos
	if err == io.EOF && r.pos < r.size {
		// The object is shorter than it was: replaced or cut off.
		err = fmt.Errorf("s3: read %s: %w at %d of %d bytes", r.key, io.ErrUnexpectedEOF, r.pos, r.size)
	}
	if r.resume(err) {
		if n > 0 {
			return n, nil
		}
		return r.Read(p)
	}
	return n, err
}

// maxResumes bounds the GETs a reader sends again after a cut.
const maxResumes = 3

// resume says whether the body's read error err is its connection's
// (reset by the server, a proxy, the network), which a GET of the rest
// gets past, and if so drops the body so the next read sends that GET:
// the client is served whole instead of a broken transfer. The object
// is content-addressed, and that GET checks its length again. A stall
// (the read's idle bound) or a cancelled request is not resumed: the
// bounds on a hung server hold as they are.
func (r *objectReader) resume(err error) bool {
	if err == nil || err == io.EOF || r.resumes >= maxResumes || r.ctx.Err() != nil {
		return false
	}
	if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, io.ErrUnexpectedEOF) {
		return false
	}
	if r.pos >= r.size {
		return false // the object ran past its size
	}
	r.resumes++
	r.body.Close()
	r.body = nil
	return true
}

// open starts the GET from pos, unless one runs from there. The object's
// length in the answer must be the size the reader was opened with: a
// shorter or longer object under the key is not the blob.
func (r *objectReader) open() error {
	if r.body != nil && r.bodyPos == r.pos {
		return nil
	}
	if r.body != nil {
		r.body.Close()
		r.body = nil
	}
	rng := "bytes=" + strconv.FormatInt(r.pos, 10) + "-"
	get := func(key string) (*awss3.GetObjectOutput, error) {
		return r.s.client.GetObject(r.ctx, &awss3.GetObjectInput{Bucket: &r.s.bucket, Key: &key, Range: &rng})
	}
	out, err := get(r.key)
	if statusOf(err) == http.StatusNotFound && r.linked.Hex != "" {
		d := r.linked
		r.linked = blobstore.Digest{} // followed once; the key is then the data's
		err = r.s.viaLink(r.ctx, d, func(l link) error {
			key := r.s.dataKey(l.Data)
			var gerr error
			if out, gerr = get(key); gerr == nil {
				r.key = key
			}
			return gerr
		})
		if err != nil {
			return fmt.Errorf("s3: read %s: %w", r.key, err)
		}
	}
	if err != nil {
		if statusOf(err) == http.StatusNotFound {
			return fmt.Errorf("s3: read %s: %w", r.key, blobstore.ErrNotFound)
		}
		return fmt.Errorf("s3: read %s: %w", r.key, err)
	}
	total, ok := totalFromContentRange(aws.ToString(out.ContentRange))
	if !ok && r.pos == 0 {
		total, ok = aws.ToInt64(out.ContentLength), true // the range ignored: the whole object
	}
	if !ok {
		out.Body.Close() // from 0, not from pos: not these bytes
		return fmt.Errorf("s3: read %s: the server ignored %s", r.key, rng)
	}
	if total != r.size {
		out.Body.Close()
		err := fmt.Errorf("s3: read %s: %w: the object is %d bytes (%s), the blob %d",
			r.key, blobstore.ErrSizeMismatch, total, aws.ToString(out.ContentRange), r.size)
		if total < r.size {
			err = fmt.Errorf("%w (%w)", err, io.ErrUnexpectedEOF) // cut short, as a Read would find
		}
		return err
	}
	r.body, r.bodyPos = out.Body, r.pos
	return nil
}

// copyBufSize is the buffer WriteTo moves a blob with. io.Copy's 32 KiB
// means two syscalls (a read from S3, a write to the client) per 32 KiB;
// a larger buffer lets each socket read take what has arrived and each
// write hand the kernel a large piece.
const copyBufSize = 1 << 20

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// WriteTo sends the rest of the object to w with a large buffer: io.Copy
// (the registry's whole-blob GET) takes it over Read.
func (r *objectReader) WriteTo(w io.Writer) (int64, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	var total int64
	for r.pos < r.size {
		if err := r.open(); err != nil {
			return total, err
		}
		n, rerr := io.ReadAtLeast(r.body, buf, min(len(buf), 64<<10, int(r.size-r.pos)))
		r.pos += int64(n)
		r.bodyPos = r.pos
		if n > 0 {
			m, werr := w.Write(buf[:n])
			total += int64(m)
			if werr != nil {
				return total, werr
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			if r.pos >= r.size {
				break
			}
			rerr = fmt.Errorf("s3: read %s: %w at %d of %d bytes", r.key, io.ErrUnexpectedEOF, r.pos, r.size)
		}
		if r.resume(rerr) {
			continue
		}
		if rerr != nil {
			return total, rerr
		}
	}
	return total, nil
}

func (r *objectReader) Seek(offset int64, whence int) (int64, error) {
	pos := offset
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		pos += r.pos
	case io.SeekEnd:
		pos += r.size
	default:
		return r.pos, errors.New("s3: seek: bad whence")
	}
	if pos < 0 {
		return r.pos, errors.New("s3: seek before the start")
	}
	r.pos = pos // the body, if any, stays for a Read back at bodyPos
	return pos, nil
}

func (r *objectReader) Close() error {
	if r.body == nil {
		return nil
	}
	err := r.body.Close()
	r.body = nil
	return err
}

var _ blobstore.RecordedOpener = (*Store)(nil)
