package registry

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/cache/composite"
	"github.com/caddy-oci/caddy-oci/cache/coord"
	"github.com/caddy-oci/caddy-oci/cache/metastore/badgermeta"
)

// TestBlobCutWhileServedBreaksTransfer: an S3 object cut short while its
// GET streams it (the answer's headers, with the blob's length, are out)
// ends the answer with a broken transfer, never a clean end of fewer
// bytes. Over HTTP/2 a handler that returns early ends the stream
// cleanly (END_STREAM), which only a client that counts against
// Content-Length catches (Go's reports io.ErrUnexpectedEOF; a cache in
// front may keep the short body); the stream must be reset instead.
func TestBlobCutWhileServedBreaksTransfer(t *testing.T) {
	gwDir := t.TempDir()
	gw := s3test.StartIn(t, gwDir)
	bucket := gw.Bucket(t)
	blobs, err := s3.New(context.Background(), s3.Config{
		Bucket: bucket, Endpoint: gw.Endpoint, Region: gw.Region, Prefix: "reg/",
		AccessKey: gw.AccessKey, SecretKey: gw.SecretKey, PathStyle: true,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	meta, err := badgermeta.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = meta.Close() })
	st, err := composite.New(composite.Options{Blobs: blobs, Meta: meta, Leases: coord.NewLocal()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	srv := httptest.NewUnstartedServer(New(Config{Store: st, Logger: zaptest.NewLogger(t), LocalPrefixes: []string{"team"}}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	client := srv.Client()

	// Large enough that the answer's flow control (a 4 MiB window, the
	// socket buffers) holds most of it back until the client reads.
	data := make([]byte, 48<<20)
	rand.Read(data)
	sum := sha256.Sum256(data)
	hexd := hex.EncodeToString(sum[:])
	push := func() {
		t.Helper()
		resp, err := client.Post(srv.URL+"/v2/team/app/blobs/uploads/?digest=sha256:"+hexd, "application/octet-stream", strings.NewReader(string(data)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("push: %s", resp.Status)
		}
	}
	push()
	var object string
	_ = filepath.WalkDir(gwDir, func(p string, e fs.DirEntry, err error) error {
		if err == nil && e.Name() == hexd {
			object = p
		}
		return nil
	})
	if object == "" {
		t.Fatal("the blob's object file is not in versitygw's folder")
	}

	for _, rng := range []string{"", "bytes=0-"} {
		if rng != "" {
			push() // whole again: the push replaces the object cut short
		}
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v2/team/app/blobs/sha256:"+hexd, nil)
		if rng != "" {
			req.Header.Set("Range", rng) // served by ServeContent
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode/100 != 2 || resp.ProtoMajor != 2 {
			t.Fatalf("GET %q: %s over %s", rng, resp.Status, resp.Proto)
		}
		wantTransferBroken(t, resp, rng, len(data), object)
	}
}

// wantTransferBroken cuts file (the blob resp is serving, its headers out)
// to 1 MiB, reads the rest of resp, and wants the HTTP/2 stream reset:
// never a clean end of fewer bytes than the blob's total.
func wantTransferBroken(t *testing.T, resp *http.Response, rng string, total int, file string) {
	t.Helper()
	if err := os.Truncate(file, 1<<20); err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	switch {
	case err == nil:
		t.Fatalf("GET %q of a blob cut while served: %d of %d bytes and a clean end", rng, n, total)
	case errors.Is(err, io.ErrUnexpectedEOF) || !strings.Contains(err.Error(), "stream error"):
		t.Fatalf("GET %q of a blob cut while served: %d of %d bytes, %v; want the stream reset, not ended", rng, n, total, err)
	}
}
