package s3

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
)

// partProxy is a reverse proxy on loopback in front of a real S3 server
// that sees (and may change) every UploadPart. The Host header goes
// through unchanged, so the signatures (made for the proxy's address)
// still hold.
type partProxy struct {
	url string
	// flip, if set, turns one bit in the middle of each UploadPart body:
	// corruption in flight that leaves the headers as signed.
	flip bool
	// hideChecksum, if set, drops the CRC-32C from UploadPart answers, as
	// a server that ignores the header answers.
	hideChecksum bool
	// refuseAlgorithm, if set, answers 400 to a CreateMultipartUpload that
	// names a checksum algorithm, as a server that does not know one may.
	refuseAlgorithm bool

	mu       sync.Mutex
	unsigned int // UploadParts sent with UNSIGNED-PAYLOAD
	signed   int // and with a payload hash
	withCRC  int // with an x-amz-checksum-crc32c header
}

func isUploadPart(r *http.Request) bool {
	q := r.URL.Query()
	return r.Method == http.MethodPut && q.Has("partNumber") && q.Has("uploadId")
}

// startPartProxy starts p (its settings filled in) in front of endpoint.
func startPartProxy(t *testing.T, endpoint string, p *partProxy) *partProxy {
	target, err := url.Parse(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	rp := &httputil.ReverseProxy{}
	rp.Rewrite = func(pr *httputil.ProxyRequest) {
		pr.SetURL(target)
		pr.Out.Host = pr.In.Host // as signed
		r := pr.Out
		if !isUploadPart(r) {
			return
		}
		p.mu.Lock()
		if r.Header.Get("X-Amz-Content-Sha256") == "UNSIGNED-PAYLOAD" {
			p.unsigned++
		} else {
			p.signed++
		}
		if r.Header.Get("X-Amz-Checksum-Crc32c") != "" {
			p.withCRC++
		}
		p.mu.Unlock()
		if p.flip {
			b, err := io.ReadAll(r.Body)
			if err != nil {
				t.Error(err)
				return
			}
			b[len(b)/2] ^= 0x10
			r.Body = io.NopCloser(bytes.NewReader(b))
			r.ContentLength = int64(len(b))
		}
	}
	rp.ModifyResponse = func(resp *http.Response) error {
		if p.hideChecksum && isUploadPart(resp.Request) {
			resp.Header.Del("X-Amz-Checksum-Crc32c")
		}
		return nil
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p.refuseAlgorithm && r.Method == http.MethodPost && r.URL.Query().Has("uploads") &&
			r.Header.Get("X-Amz-Checksum-Algorithm") != "" {
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidArgument</Code><Message>unknown header</Message></Error>`)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	p.url = srv.URL
	return p
}

func (p *partProxy) counts() (unsigned, signed, withCRC int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.unsigned, p.signed, p.withCRC
}

func storeVia(t *testing.T, srv *s3test.Server, bucket, endpoint, prefix string) *Store {
	t.Helper()
	s, err := New(context.Background(), Config{
		Bucket: bucket, Endpoint: endpoint, Region: srv.Region, Prefix: prefix,
		AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true, PartSize: minPartSize,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestCorruptPartRefused: parts go unsigned (no SHA-256 of their own), so
// what stops a part whose bytes changed on the way is the CRC-32C they
// carry. A proxy flips one bit of every UploadPart body, headers as
// signed; the real server must refuse the part, and the Append and the Put
// fail with nothing stored.
func TestCorruptPartRefused(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	p := startPartProxy(t, srv.Endpoint, &partProxy{flip: true})
	s := storeVia(t, srv, bucket, p.url, "p/")
	blob := randomBytes(2*minPartSize + 100)
	d := blobstore.FromBytes(blobstore.SHA256, blob)

	ss, err := s.NewSession(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if n, err := ss.Append(ctx(t), 0, bytes.NewReader(blob)); err == nil {
		t.Fatalf("Append of corrupted parts = %d, nil; want the server's refusal", n)
	}
	if ss.Size() != 0 {
		t.Errorf("session size %d after a refused Append, want 0", ss.Size())
	}
	// Unknown size: the Put path cuts the blob into parts too.
	if _, err := s.Put(ctx(t), d, -1, bytes.NewReader(blob)); err == nil {
		t.Fatal("Put of corrupted parts succeeded")
	}
	if _, err := s.Stat(ctx(t), d); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Stat after refused uploads = %v, want ErrNotFound", err)
	}
	unsigned, signed, withCRC := p.counts()
	if unsigned == 0 || signed != 0 || withCRC != unsigned {
		t.Errorf("UploadParts: %d unsigned, %d signed, %d with a CRC-32C; want all unsigned with a CRC-32C", unsigned, signed, withCRC)
	}
	if s.noChecksums.Load() {
		t.Error("a refused part made the store give up checksums")
	}
}

// TestPartChecksumIgnored: a server that does not echo the part's CRC-32C
// may not have checked it, so the part goes again, signed with its
// SHA-256, and so does every later one; one that refuses an upload
// created with a checksum algorithm gets one without, and signed parts.
// Either way the blob is whole.
func TestPartChecksumIgnored(t *testing.T) {
	t.Run("not echoed", func(t *testing.T) { testChecksumFallback(t, false) })
	t.Run("algorithm refused", func(t *testing.T) { testChecksumFallback(t, true) })
}

func testChecksumFallback(t *testing.T, refuse bool) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	p := startPartProxy(t, srv.Endpoint, &partProxy{hideChecksum: !refuse, refuseAlgorithm: refuse})
	s := storeVia(t, srv, bucket, p.url, "p/")
	blob := randomBytes(3*minPartSize + 100)
	d := blobstore.FromBytes(blobstore.SHA256, blob)

	ss, err := s.NewSession(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ss.Append(ctx(t), 0, bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	if _, err := ss.Commit(ctx(t), d, int64(len(blob))); err != nil {
		t.Fatal(err)
	}
	if !s.noChecksums.Load() {
		t.Fatal("the store did not fall back to signed parts")
	}
	unsigned, signed, withCRC := p.counts()
	if refuse {
		if unsigned != 0 || withCRC != 0 || signed != 4 {
			t.Errorf("UploadParts: %d unsigned, %d with a CRC-32C, %d signed; want 4 signed, none with a CRC-32C", unsigned, withCRC, signed)
		}
	} else if unsigned < 1 || unsigned > 2 || signed != 4 {
		// Parts 1 and 2 go together: both may go unsigned once; whichever
		// did goes again signed; part 2 (if it had not gone), 3 and the tail
		// go signed: 4 signed whatever the timing.
		t.Errorf("UploadParts: %d unsigned, %d signed; want 1-2 unsigned, 4 signed", unsigned, signed)
	}
	b, err := s.Open(ctx(t), d)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	got, err := io.ReadAll(b)
	if err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("read back %d bytes, %v; want the blob", len(got), err)
	}
}

// TestPartChecksumsResume: a session's part checksums travel in its state,
// so another replica completes the upload (S3 wants them again there);
// a state whose checksums are malformed is refused.
func TestPartChecksumsResume(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	a, b := newStore(t, srv, bucket, "r/"), newStore(t, srv, bucket, "r/")
	blob := randomBytes(minPartSize + 100)
	d := blobstore.FromBytes(blobstore.SHA256, blob)
	ss, err := a.NewSession(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ss.Append(ctx(t), 0, bytes.NewReader(blob[:minPartSize+10])); err != nil {
		t.Fatal(err)
	}
	state, err := ss.State()
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(state, &m); err != nil {
		t.Fatal(err)
	}
	if m["crc32c"] != true || len(m["part_crc32c"].([]any)) != 1 {
		t.Fatalf("state %s: want crc32c and one part checksum", state)
	}
	if a.noChecksums.Load() {
		t.Fatal("versitygw's answer to a part did not echo its CRC-32C")
	}
	for _, bad := range []string{"not base64", "AAAA", "AAAAAAA=", ""} {
		m["part_crc32c"] = []string{bad}
		forged, _ := json.Marshal(m)
		if _, err := b.ResumeSession(ctx(t), forged); !errors.Is(err, blobstore.ErrSessionUnknown) {
			t.Errorf("part checksum %q: ResumeSession = %v, want ErrSessionUnknown", bad, err)
		}
	}
	resumed, err := b.ResumeSession(ctx(t), state)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := resumed.Append(ctx(t), minPartSize+10, bytes.NewReader(blob[minPartSize+10:])); err != nil {
		t.Fatal(err)
	}
	if _, err := resumed.Commit(ctx(t), d, int64(len(blob))); err != nil {
		t.Fatal(err)
	}
	r, err := a.Open(ctx(t), d)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("read back %d bytes, %v; want the blob", len(got), err)
	}
}

// TestResumeWithoutPartChecksums: a session whose upload was created
// without checksums (by a replica of an earlier release, or one that gave
// them up) has a state without them; a replica that uses them resumes it
// with signed parts and completes it without checksums, as it began.
func TestResumeWithoutPartChecksums(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	old := newStore(t, srv, bucket, "r/")
	old.noChecksums.Store(true)
	p := startPartProxy(t, srv.Endpoint, &partProxy{})
	b := storeVia(t, srv, bucket, p.url, "r/")
	blob := randomBytes(2*minPartSize + 100)
	d := blobstore.FromBytes(blobstore.SHA256, blob)
	ss, err := old.NewSession(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ss.Append(ctx(t), 0, bytes.NewReader(blob[:minPartSize+10])); err != nil {
		t.Fatal(err)
	}
	state, err := ss.State()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(state, []byte("crc32c")) {
		t.Fatalf("state %s of an upload without checksums names them", state)
	}
	resumed, err := b.ResumeSession(ctx(t), state)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := resumed.Append(ctx(t), minPartSize+10, bytes.NewReader(blob[minPartSize+10:])); err != nil {
		t.Fatal(err)
	}
	if _, err := resumed.Commit(ctx(t), d, int64(len(blob))); err != nil {
		t.Fatal(err)
	}
	if unsigned, signed, withCRC := p.counts(); unsigned != 0 || withCRC != 0 || signed != 2 {
		t.Errorf("UploadParts: %d unsigned, %d with a CRC-32C, %d signed; want 2 signed (part 2, the tail)", unsigned, withCRC, signed)
	}
	r, err := b.Open(ctx(t), d)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("read back %d bytes, %v; want the blob", len(got), err)
	}
}
