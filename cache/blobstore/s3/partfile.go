package s3

// The parts of an upload session are filled on local disk, not in memory.
// A chunk arrives at its client's pace, and a client may stall, or
// trickle, with any number of sessions open: a part's worth of memory per
// chunk in flight (8 MiB by default) made 100 stalled chunked pushes hold
// 775 MiB. A part in a file holds page cache, which the kernel writes
// back and reclaims, and the process a copy buffer. The file is unlinked
// as soon as it is made, so nothing is left behind whatever happens.

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"sync"
)

// partFile is a part being filled, in an unlinked temporary file.
type partFile struct {
	f    *os.File
	size int64
	crc  hash.Hash32 // CRC-32C of the bytes written, the part's checksum
}

// partCopyBufs are the buffers bytes pass through on their way to a part
// file: small, as a stalled chunk holds one while it waits.
var partCopyBufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// newPartFile makes an empty part file in dir (the system's temporary
// folder when empty).
func newPartFile(dir string) (*partFile, error) {
	f, err := os.CreateTemp(dir, "caddy-oci-s3-part-*")
	if err != nil {
		return nil, fmt.Errorf("s3: a part's local file: %w", err)
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, fmt.Errorf("s3: a part's local file: %w", err)
	}
	return &partFile{f: f, crc: crc32.New(castagnoli)}, nil
}

// fill copies r into p until p holds limit bytes or r ends, hashing into
// h as well. Like fill, it returns io.EOF once r has ended, nil when p is
// full.
func (p *partFile) fill(r io.Reader, h hash.Hash, limit int64) (int64, error) {
	bp := partCopyBufs.Get().(*[]byte)
	defer partCopyBufs.Put(bp)
	buf := *bp
	var n int64
	for p.size < limit {
		want := min(int64(len(buf)), limit-p.size)
		got, err := io.ReadFull(r, buf[:want])
		if got > 0 {
			if _, werr := p.f.WriteAt(buf[:got], p.size); werr != nil {
				return n, fmt.Errorf("s3: a part's local file: %w", werr)
			}
			h.Write(buf[:got])
			p.crc.Write(buf[:got])
			p.size += int64(got)
			n += int64(got)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return n, io.EOF
		}
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Write appends b, read back from S3 (a session's tail), without hashing
// it into the blob's hash: that hash has it already.
func (p *partFile) Write(b []byte) (int, error) {
	if _, err := p.f.WriteAt(b, p.size); err != nil {
		return 0, fmt.Errorf("s3: a part's local file: %w", err)
	}
	p.crc.Write(b)
	p.size += int64(len(b))
	return len(b), nil
}

func (p *partFile) len() int64 { return p.size }

// body reads the part from its start; each call starts again (a retry).
func (p *partFile) body() io.ReadSeeker { return io.NewSectionReader(p.f, 0, p.size) }

// crc32c is the part's CRC-32C as S3 writes it.
func (p *partFile) crc32c() string {
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], p.crc.Sum32())
	return base64.StdEncoding.EncodeToString(sum[:])
}

// tailSHA256 reads the part back and returns its SHA-256, which the
// session's state records for a part that stays a tail, after checking
// that the file holds the bytes written to it (their CRC-32C). Only a
// tail is hashed so, at the end of a chunk, rather than every byte of
// every part as it arrives.
func (p *partFile) tailSHA256() ([]byte, error) {
	h, c := sha256.New(), crc32.New(castagnoli)
	if _, err := io.Copy(io.MultiWriter(h, c), p.body()); err != nil {
		return nil, fmt.Errorf("s3: a part's local file: %w", err)
	}
	if c.Sum32() != p.crc.Sum32() {
		return nil, errors.New("s3: a part's local file does not hold the bytes written to it")
	}
	return h.Sum(nil), nil
}

// reset empties p for the next part.
func (p *partFile) reset() error {
	if err := p.f.Truncate(0); err != nil {
		return fmt.Errorf("s3: a part's local file: %w", err)
	}
	p.size = 0
	p.crc.Reset()
	return nil
}

func (p *partFile) close() { p.f.Close() }

// partFiles are the part files of one upload's parts in flight: a file
// whose part has gone to S3 fills again, so an upload uses at most
// partsInFlight+1 of them whatever its length.
type partFiles struct {
	all  []*partFile // every file made; only the filling goroutine touches it
	mu   sync.Mutex
	free []*partFile // files whose part has gone
}

// take is an empty part file.
func (fs *partFiles) take() (*partFile, error) {
	fs.mu.Lock()
	if k := len(fs.free); k > 0 {
		f := fs.free[k-1]
		fs.free = fs.free[:k-1]
		fs.mu.Unlock()
		return f, f.reset()
	}
	fs.mu.Unlock()
	f, err := newPartFile("") // the system's temporary folder ($TMPDIR)
	if err != nil {
		return nil, err
	}
	fs.all = append(fs.all, f)
	return f, nil
}

// gone is what partWriter.send calls once f's part has gone (or failed).
// Its bytes are dropped now, not when f fills again: a chunk that stalls
// would otherwise keep a whole part it no longer needs on disk (in RAM
// where the temporary folder is a tmpfs), 900 MiB for 100 stalled chunks.
// No upload reads f any more (the SDK cuts its request body off once the
// call returns); take still resets f, and reports a failure.
func (fs *partFiles) gone(f *partFile) func() {
	return func() {
		_ = f.f.Truncate(0) // take reports a failure
		fs.mu.Lock()
		fs.free = append(fs.free, f)
		fs.mu.Unlock()
	}
}

// close closes every file; no upload may still read one.
func (fs *partFiles) close() {
	for _, f := range fs.all {
		f.close()
	}
}
