package s3

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
)

// cuttingProxy forwards TCP to target and resets each of the first cuts
// connections once it has carried after bytes from the server: a network
// that drops connections mid-body.
func cuttingProxy(t *testing.T, target string, cuts int64, after int) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var left atomic.Int64
	left.Store(cuts)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			cut := left.Add(-1) >= 0
			go func() { _, _ = io.Copy(s, c); s.Close() }()
			go func() {
				defer c.Close()
				if !cut {
					_, _ = io.Copy(c, s)
					return
				}
				_, _ = io.CopyN(c, s, int64(after))
				c.(*net.TCPConn).SetLinger(0) // RST, not FIN
				s.Close()
			}()
		}
	}()
	return ln.Addr().String()
}

// TestReadResumesAfterCut: a blob's GET whose connection is reset
// mid-body is resumed from where it stopped (a GET of the rest), by Read
// and by WriteTo, so the reader gets the blob whole rather than an error
// its client sees as a broken transfer. Two cuts in a row are resumed
// too.
func TestReadResumesAfterCut(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	direct := newStore(t, srv, bucket, "")
	c := randomBytes(3<<20 + 5)
	d := blobstore.FromBytes(blobstore.SHA256, c)
	if _, err := direct.Put(ctx(t), d, int64(len(c)), bytes.NewReader(c)); err != nil {
		t.Fatal(err)
	}
	for _, how := range []string{"Read", "WriteTo"} {
		t.Run(how, func(t *testing.T) {
			proxy := cuttingProxy(t, strings.TrimPrefix(srv.Endpoint, "http://"), 2, 1<<20)
			s, err := New(context.Background(), Config{
				Bucket: bucket, Endpoint: "http://" + proxy, Region: srv.Region,
				AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true, PartSize: minPartSize,
			}, nil)
			if err != nil {
				t.Fatal(err)
			}
			b, err := s.OpenRecorded(ctx(t), d, int64(len(c)))
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			var got bytes.Buffer
			if how == "Read" {
				_, err = io.Copy(&got, struct{ io.Reader }{b}) // Read, not WriteTo
			} else {
				_, err = b.(io.WriterTo).WriteTo(&got)
			}
			if err != nil || !bytes.Equal(got.Bytes(), c) {
				t.Fatalf("%s through two cut connections: %d of %d bytes, %v", how, got.Len(), len(c), err)
			}
		})
	}
}
