package registry

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache"
)

// readerFromRecorder is a ResponseWriter that, like net/http's, has a
// ReadFrom; it records whether ServeContent reached it (the sendfile path).
type readerFromRecorder struct {
	*httptest.ResponseRecorder
	src io.Reader
}

func (r *readerFromRecorder) ReadFrom(src io.Reader) (int64, error) {
	r.src = src
	return io.Copy(r.ResponseRecorder, src)
}

func TestObservedWriterKeepsReadFrom(t *testing.T) {
	path := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(path, []byte(strings.Repeat("x", 10000)), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rec := &readerFromRecorder{ResponseRecorder: httptest.NewRecorder()}
	ow := &observedWriter{ResponseWriter: rec}
	var _ io.ReaderFrom = ow
	var _ http.Flusher = ow
	http.ServeContent(ow, httptest.NewRequest("GET", "/", nil), "", time.Time{}, f)
	if rec.src == nil {
		t.Fatal("ServeContent did not reach the underlying ReadFrom")
	}
	if lr, ok := rec.src.(*io.LimitedReader); !ok || lr.R != f {
		t.Errorf("ReadFrom got %T, want the *os.File (inside a LimitedReader)", rec.src)
	}
	if ow.written != 10000 || ow.statusCode() != 200 {
		t.Errorf("observed %d bytes, status %d", ow.written, ow.statusCode())
	}
}

// TestBlobGetReachesSendfile: a blob GET through the handler on the
// filesystem store hands the writer's ReadFrom a reader behind which
// net/http finds the file (what its sendfile path asserts: syscall.Conn,
// after unwrapping ServeContent's LimitedReader), whether the whole blob
// or a range is asked for. Whatever the store returns as a Blob must keep
// that reachable, or every pull becomes a user-space copy.
func TestBlobGetReachesSendfile(t *testing.T) {
	tr := newTestRegistry(t)
	data := bytes.Repeat([]byte("sendfile "), 2000)
	d := cache.FromBytes(cache.SHA256, data)
	if resp := tr.do("POST", "/v2/o/blobs/uploads/?digest="+d.String(), data); resp.StatusCode != http.StatusCreated {
		t.Fatalf("push: %d %s", resp.StatusCode, resp.body)
	}
	h := New(Config{Store: tr.store})
	for _, tt := range []struct {
		name, hdr, val string
		status         int
		want           []byte
	}{
		{"whole", "", "", http.StatusOK, data},
		{"range", "Range", "bytes=100-4999", http.StatusPartialContent, data[100:5000]},
		{"conditional", "If-None-Match", `"other"`, http.StatusOK, data},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "/v2/o/blobs/"+d.String(), nil)
			if tt.hdr != "" {
				req.Header.Set(tt.hdr, tt.val)
			}
			rec := &readerFromRecorder{ResponseRecorder: httptest.NewRecorder()}
			h.ServeHTTP(rec, req)
			if rec.Code != tt.status || !bytes.Equal(rec.Body.Bytes(), tt.want) {
				t.Fatalf("status %d, %d bytes; want %d, %d bytes", rec.Code, rec.Body.Len(), tt.status, len(tt.want))
			}
			src := rec.src
			if lr, ok := src.(*io.LimitedReader); ok {
				src = lr.R
			}
			if _, ok := src.(syscall.Conn); !ok {
				t.Errorf("ReadFrom got %T, which hides the blob's file from sendfile", rec.src)
			}
		})
	}
}

func TestObserver(t *testing.T) {
	tr := newTestRegistry(t)
	data := []byte("observed content")
	d := cache.FromBytes(cache.SHA256, data)
	steps := []struct {
		method, path string
		body         []byte
		op           string
		status       int
		in, out      int64
	}{
		{"POST", "/v2/o/blobs/uploads/?digest=" + d.String(), data, OpUploadMonolithic, 201, int64(len(data)), 0},
		{"GET", "/v2/o/blobs/" + d.String(), nil, OpBlobGet, 200, 0, int64(len(data))},
		{"HEAD", "/v2/o/blobs/" + d.String(), nil, OpBlobHead, 200, 0, 0},
		{"POST", "/v2/p/blobs/uploads/?mount=" + d.String() + "&from=o", nil, OpBlobMount, 201, 0, 0},
		{"POST", "/v2/o/blobs/uploads/", nil, OpUploadStart, 202, 0, 0},
		{"GET", "/v2/o/tags/list", nil, OpTagsList, 200, 0, -1},
		{"GET", "/v2/_catalog", nil, OpCatalog, 200, 0, -1},
		{"GET", "/v2/o/referrers/" + d.String(), nil, OpReferrers, 200, 0, -1},
		{"GET", "/v2/o/manifests/x", nil, OpManifestGet, 404, 0, -1},
		{"DELETE", "/v2/o/blobs/" + d.String(), nil, OpBlobDelete, 202, 0, 0},
		{"PATCH", "/v2/o/manifests/x", nil, OpUnsupported, 405, 0, -1},
		{"GET", "/nothing", nil, OpNotFound, 404, 0, -1},
	}
	for _, s := range steps {
		resp := tr.do(s.method, s.path, s.body)
		o := tr.obs.last()
		if o.op != s.op || o.status != s.status || o.bytesIn != s.in || (s.out >= 0 && o.bytesO != s.out) {
			t.Errorf("%s %s: observed %+v, want op %s status %d in %d out %d (response %d)", s.method, s.path, o, s.op, s.status, s.in, s.out, resp.StatusCode)
		}
		if s.out < 0 && o.bytesO != int64(len(resp.body)) {
			t.Errorf("%s %s: observed %d bytes out, sent %d", s.method, s.path, o.bytesO, len(resp.body))
		}
	}
}
