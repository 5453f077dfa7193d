// Package s3test runs a real S3 server for tests: versitygw with its posix
// backend in a temporary folder, on a free loopback port. Tests skip when
// versitygw is not installed, and fail instead when CADDY_OCI_E2E=1 (CI
// installs it: see .ci/run).
package s3test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"go/build"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
)

// Server is a running S3 server.
type Server struct {
	Endpoint  string // http://127.0.0.1:<port>
	Region    string
	AccessKey string
	SecretKey string
	client    *awss3.Client

	// What Restart needs to run the same server again: the same port and
	// data folder, so clients and buckets carry on (fault drills).
	bin, addr, dir string
	mu             sync.Mutex
	proc           *exec.Cmd
	exited         chan error
	out            *syncBuffer
}

// binary finds versitygw on PATH or where `go install` puts it.
func binary() (string, bool) {
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, true
	}
	gobin := os.Getenv("GOBIN")
	if gobin == "" {
		gobin = filepath.Join(build.Default.GOPATH, "bin")
	}
	p := filepath.Join(gobin, "versitygw")
	if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
		return p, true
	}
	return "", false
}

// Start runs a versitygw for the test and stops it when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartIn(t, t.TempDir())
}

// StartIn is Start with the buckets' files in dir: a small filesystem of
// the test's, to fill to the brim.
func StartIn(t testing.TB, dir string) *Server {
	t.Helper()
	bin, ok := binary()
	if !ok {
		const msg = "versitygw is not installed: go install github.com/versity/versitygw/cmd/versitygw@v1.8.0"
		if os.Getenv("CADDY_OCI_E2E") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	srv := &Server{
		Endpoint:  "",
		Region:    "us-east-1",
		AccessKey: "test" + randomHex(t, 4),
		SecretKey: randomHex(t, 16),
		bin:       bin,
		addr:      freeAddr(t),
		dir:       dir,
		out:       new(syncBuffer),
	}
	srv.Endpoint = "http://" + srv.addr
	srv.client = awss3.New(awss3.Options{
		Region:       srv.Region,
		BaseEndpoint: aws.String(srv.Endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(srv.AccessKey, srv.SecretKey, ""),
	})
	t.Cleanup(func() {
		srv.Kill()
		if t.Failed() {
			t.Logf("versitygw output:\n%s", srv.out.String())
		}
	})
	srv.Restart(t)
	return srv
}

// Kill ends the server with SIGKILL, as a crash or a lost network would
// look to its clients; Restart brings it back. Killing a stopped server
// does nothing.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return
	}
	_ = s.proc.Process.Kill()
	<-s.exited
	s.proc = nil
}

// Restart starts the server (again, after Kill) on the same port and data
// folder, so its buckets and objects are back, and returns once it
// answers.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		t.Fatal("s3test: Restart of a server that runs")
	}
	cmd := exec.Command(s.bin, "--port", s.addr, "--access", s.AccessKey, "--secret", s.SecretKey,
		"--region", s.Region, "--quiet", "posix", s.dir)
	cmd.Stdout, cmd.Stderr = s.out, s.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start versitygw: %v", err)
	}
	// Closed after its one value, so Kill does not block on a process
	// whose exit waitReady already read.
	exited := make(chan error, 1)
	go func() {
		exited <- cmd.Wait()
		close(exited)
	}()
	s.proc, s.exited = cmd, exited
	s.waitReady(t, exited, s.out)
}

// MoveTo starts a killed server again on the same data folder but a new
// port, as a server brought back elsewhere after a crash: Endpoint names
// the new address, and clients of the old one reach nothing.
func (s *Server) MoveTo(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	if s.proc != nil {
		s.mu.Unlock()
		t.Fatal("s3test: MoveTo of a server that runs")
	}
	s.addr = freeAddr(t)
	s.Endpoint = "http://" + s.addr
	s.client = awss3.New(awss3.Options{
		Region:       s.Region,
		BaseEndpoint: aws.String(s.Endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, ""),
	})
	s.mu.Unlock()
	s.Restart(t)
}

// waitReady polls until the server answers an S3 request.
func (s *Server) waitReady(t testing.TB, exited <-chan error, out *syncBuffer) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := s.client.ListBuckets(ctx, &awss3.ListBucketsInput{})
		cancel()
		if err == nil {
			return
		}
		select {
		case werr := <-exited:
			t.Fatalf("versitygw exited (%v):\n%s", werr, out.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("versitygw not ready after 30s: %v\n%s", err, out.String())
		}
	}
}

// Bucket creates a new, empty bucket and returns its name.
func (s *Server) Bucket(t testing.TB) string {
	t.Helper()
	name := "b" + randomHex(t, 8)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.client.CreateBucket(ctx, &awss3.CreateBucketInput{Bucket: &name}); err != nil {
		t.Fatalf("create bucket: %v", err)
	}
	return name
}

// Keys lists every key under prefix in bucket, and the keys of multipart
// uploads in progress there: what a test checks is left behind.
func (s *Server) Keys(t testing.TB, bucket, prefix string) (objects, uploads []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pages := awss3.NewListObjectsV2Paginator(s.client, &awss3.ListObjectsV2Input{Bucket: &bucket, Prefix: &prefix})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			t.Fatalf("list objects: %v", err)
		}
		for _, o := range page.Contents {
			objects = append(objects, aws.ToString(o.Key))
		}
	}
	mu, err := s.client.ListMultipartUploads(ctx, &awss3.ListMultipartUploadsInput{Bucket: &bucket, Prefix: &prefix})
	if err != nil {
		t.Fatalf("list multipart uploads: %v", err)
	}
	for _, u := range mu.Uploads {
		uploads = append(uploads, aws.ToString(u.Key))
	}
	return objects, uploads
}

// Put writes b at key in bucket behind the registry's back: what a test
// does to see who serves which bytes.
func (s *Server) Put(t testing.TB, bucket, key string, b []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.client.PutObject(ctx, &awss3.PutObjectInput{Bucket: &bucket, Key: &key, Body: bytes.NewReader(b)}); err != nil {
		t.Fatalf("put object: %v", err)
	}
}

// Delete removes key from bucket behind the registry's back: what a test
// does to stand for a crash or an operator's mistake.
func (s *Server) Delete(t testing.TB, bucket, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.client.DeleteObject(ctx, &awss3.DeleteObjectInput{Bucket: &bucket, Key: &key}); err != nil {
		t.Fatalf("delete object: %v", err)
	}
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func randomHex(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// syncBuffer collects the server's output from its two pipes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Client is an SDK client of the server, for what a test does behind the
// registry's back (a multipart upload a crashed replica left).
func (s *Server) Client() *awss3.Client { return s.client }
