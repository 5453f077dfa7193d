package s3

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
)

// blackHole is a TCP proxy in front of srv that, from its first
// connection on, passes requests but never an answer, and then takes no
// new connection (its port refuses them): the network to the server
// gone while a call waits for its answer, as a cut link or a firewall
// that drops the path does, with nothing to reset the connection.
func blackHole(t *testing.T, srv *s3test.Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := srv.Endpoint[len("http://"):]
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		c, err := ln.Accept()
		ln.Close() // every later dial is refused
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", target)
		if err != nil {
			c.Close()
			return
		}
		mu.Lock()
		conns = append(conns, c, up)
		mu.Unlock()
		go io.Copy(up, c) // the request goes through; its answer never comes back
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return "http://" + ln.Addr().String()
}

// TestBlackHoledServerPatientCall: a patient call (completing a multipart
// upload) whose answer never comes, while every new connection to the
// server is refused, fails within a few probes: a probe that gets no
// answer at all (its connection refused, or its dial timed out) is no
// sign of life. Before, only a probe that timed out on a connection
// counted, so with no idle connection to probe on the call waited out
// the transport's two-minute header timeout.
func TestBlackHoledServerPatientCall(t *testing.T) {
	setStallTimeout(t, 2*time.Second)
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	st, err := New(context.Background(), Config{
		Bucket: bucket, Endpoint: blackHole(t, srv), Region: srv.Region, Prefix: "reg/",
		AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true, PartSize: minPartSize,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	bound := stallTimeout.get() + 3*probeEvery() + 3*time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	err = st.complete(ctx, "reg/cut", "no-such-upload", nil)
	took := time.Since(start)
	t.Logf("complete with the network cut: %v after %s", err, took.Round(time.Millisecond))
	if !errors.Is(err, errStalled) || took > bound {
		t.Fatalf("complete with the network cut: %v after %s; want errStalled within %s", err, took, bound)
	}
}
