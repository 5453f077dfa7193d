package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"

	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
)

// objectReader reads an object as an io.ReadSeeker. A Seek costs nothing;
// the first Read after it starts one GET from there to the end, so
// http.ServeContent's "seek to the end for the size, seek to the range,
// read it" is a single request.
type objectReader struct {
	ctx  context.Context
	s    *Store
	key  string
	size int64
	pos  int64
	body io.ReadCloser // nil until a Read needs it
}

func (r *objectReader) Size() int64 { return r.size }

func (r *objectReader) Read(p []byte) (int, error) {
	if r.pos >= r.size {
		return 0, io.EOF
	}
	if err := r.open(); err != nil {
		return 0, err
	}
	n, err := r.body.Read(p)
	r.pos += int64(n)
	if err == io.EOF && r.pos < r.size {
		// The object is shorter than it was: replaced or cut off.
		err = fmt.Errorf("s3: read %s: %w at %d of %d bytes", r.key, io.ErrUnexpectedEOF, r.pos, r.size)
	}
	return n, err
}

// open starts the GET from pos, unless one runs.
func (r *objectReader) open() error {
	if r.body != nil {
		return nil
	}
	rng := "bytes=" + strconv.FormatInt(r.pos, 10) + "-"
	out, err := r.s.client.GetObject(r.ctx, &awss3.GetObjectInput{Bucket: &r.s.bucket, Key: &r.key, Range: &rng})
	if err != nil {
		return fmt.Errorf("s3: read %s: %w", r.key, err)
	}
	r.body = out.Body
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
		if n > 0 {
			m, werr := w.Write(buf[:n])
			total += int64(m)
			if werr != nil {
				return total, werr
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			if r.pos < r.size {
				return total, fmt.Errorf("s3: read %s: %w at %d of %d bytes", r.key, io.ErrUnexpectedEOF, r.pos, r.size)
			}
			break
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
	if pos != r.pos && r.body != nil {
		r.body.Close()
		r.body = nil
	}
	r.pos = pos
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
