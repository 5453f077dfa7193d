package s3

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
)

// A server that hangs (SIGSTOP) fails a Stat within stallTimeout, a
// read whose body stops flowing mid-blob, and a streamed Put it stops
// taking, instead of any of them waiting as long as its caller does;
// once it continues, the store reads again.
func TestHungServer(t *testing.T) {
	setStallTimeout(t, 2*time.Second)
	srv := s3test.Start(t)
	st := newStore(t, srv, srv.Bucket(t), "reg/")
	c := randomBytes(64 << 20)
	d := blobstore.FromBytes(blobstore.SHA256, c)
	if _, err := st.Put(ctx(t), d, int64(len(c)), bytes.NewReader(c)); err != nil {
		t.Fatal(err)
	}
	rc, err := st.OpenRange(ctx(t), d, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := io.ReadFull(rc, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	if err := srv.Pause(); err != nil {
		t.Skip(err) // no signals on this system
	}
	resumed := false
	defer func() {
		if !resumed {
			_ = srv.Resume()
		}
	}()
	start := time.Now()
	n, err := io.Copy(io.Discard, rc)
	t.Logf("read %d more bytes, then %v after %s", n, err, time.Since(start))
	if !errors.Is(err, errStalled) || time.Since(start) > 10*time.Second {
		t.Fatalf("read from a hung server: %v after %s; want errStalled within seconds", err, time.Since(start))
	}
	start = time.Now()
	if _, err := st.Stat(ctx(t), d); !errors.Is(err, errStalled) || time.Since(start) > 5*time.Second {
		t.Fatalf("Stat on a hung server: %v after %s; want errStalled after %s", err, time.Since(start), stallTimeout.get())
	}
	// A streamed PUT (patient: no bound on its answer) into the hung
	// server fails once the connection takes no more bytes.
	big := randomBytes(64 << 20)
	start = time.Now()
	_, err = st.Put(ctx(t), blobstore.FromBytes(blobstore.SHA256, big), int64(len(big)), bytes.NewReader(big))
	if err == nil || time.Since(start) > 10*time.Second {
		t.Fatalf("streamed Put into a hung server: %v after %s; want an error within seconds", err, time.Since(start))
	}
	t.Logf("streamed Put: %v after %s", err, time.Since(start))
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	resumed = true
	if got, err := readAll(t, st, d); err != nil || len(got) != len(c) {
		t.Fatalf("read once the server continued: %d bytes, %v", len(got), err)
	}
}

// The calls that may work long before they answer (patient: completing a
// multipart upload, a streamed PUT whose body the socket took whole), and
// those whose bound grows with their body (a part), fail on a hung server
// once it does not answer a probe, within seconds of stallTimeout. Before,
// the first waited out the transport's two-minute header timeout (times
// the SDK's attempts), and a 1 MiB part 2 s + 16 s (its length at
// minTransferRate), as long as the socket's buffers took it whole.
func TestHungServerPatientCalls(t *testing.T) {
	setStallTimeout(t, 2*time.Second)
	srv := s3test.Start(t)
	st := newStore(t, srv, srv.Bucket(t), "reg/")
	small := randomBytes(64 << 10)
	d := blobstore.FromBytes(blobstore.SHA256, small)
	if err := srv.Pause(); err != nil {
		t.Skip(err) // no signals on this system
	}
	resumed := false
	defer func() {
		if !resumed {
			_ = srv.Resume()
		}
	}()
	bound := stallTimeout.get() + probeEvery() + 3*time.Second
	for _, call := range []struct {
		name string
		do   func() error
	}{
		{"complete", func() error { return st.complete(ctx(t), "reg/hung", "no-such-upload", nil) }},
		{"part the socket takes whole", func() error {
			_, err := st.uploadPart(ctx(t), "reg/hung", "no-such-upload", 1, memPart(randomBytes(1<<20)), false)
			return err
		}},
		{"streamed put", func() error {
			_, err := st.putStream(ctx(t), d, int64(len(small)), bytes.NewReader(small), sha256.New())
			return err
		}},
	} {
		start := time.Now()
		err := call.do()
		t.Logf("%s on a hung server: %v after %s", call.name, err, time.Since(start).Round(time.Millisecond))
		if !errors.Is(err, errStalled) || time.Since(start) > bound {
			t.Errorf("%s on a hung server: %v after %s; want errStalled within %s", call.name, err, time.Since(start), bound)
		}
	}
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	resumed = true
	if _, err := st.putStream(ctx(t), d, int64(len(small)), bytes.NewReader(small), sha256.New()); err != nil {
		t.Fatalf("streamed put once the server continued: %v", err)
	}
}

// busyProxy stands in front of srv as a busy server does: it answers
// HeadBucket (the watch's probe) after answerIn with 503 SlowDown, and
// the answer to an object PUT after putAnswerIn. It answers, so it is
// alive.
func busyProxy(t *testing.T, srv *s3test.Server, bucket string, answerIn, putAnswerIn time.Duration) (string, *atomic.Int64) {
	t.Helper()
	target, err := url.Parse(srv.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	probes := new(atomic.Int64)
	p := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead && strings.Trim(r.URL.Path, "/") == bucket {
			probes.Add(1)
			time.Sleep(answerIn)
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		if r.Method == http.MethodPut {
			rp.ServeHTTP(delayedAnswer{w, putAnswerIn}, r)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		p.Close()
		t.Logf("probes answered: %d", probes.Load())
	})
	return p.URL, probes
}

// delayedAnswer holds the status line of an answer back by its delay.
type delayedAnswer struct {
	http.ResponseWriter
	delay time.Duration
}

func (d delayedAnswer) WriteHeader(code int) {
	time.Sleep(d.delay)
	d.ResponseWriter.WriteHeader(code)
}

// TestBusyServerPatientCall: a patient call (a streamed PUT the server
// works on before it answers) to a server that is slow but alive, and
// answers each probe within stallTimeout (with 503 SlowDown, as a
// throttling S3 does), succeeds. A probe is answered, or it is not: one
// attempt says so. Before, the probe was retried as any call is (three
// attempts and their backoff), so three answers of 0.9 s with
// stallTimeout 2 s added up past the probe's bound: errStalled, and the
// good PUT failed after 2.5 s.
func TestBusyServerPatientCall(t *testing.T) {
	setStallTimeout(t, 2*time.Second)
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	endpoint, _ := busyProxy(t, srv, bucket, 900*time.Millisecond, 4*time.Second)
	st, err := New(context.Background(), Config{
		Bucket: bucket, Endpoint: endpoint, Region: srv.Region, Prefix: "reg/",
		AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true, PartSize: minPartSize,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := randomBytes(2 << 20)
	d := blobstore.FromBytes(blobstore.SHA256, b)
	start := time.Now()
	if _, err := st.putStream(ctx(t), d, int64(len(b)), bytes.NewReader(b), sha256.New()); err != nil {
		t.Fatalf("streamed put to a busy server that answers: %v after %s", err, time.Since(start).Round(time.Millisecond))
	}
	if got, err := readAll(t, newStore(t, srv, bucket, "reg/"), d); err != nil || !bytes.Equal(got, b) {
		t.Fatalf("read back: %d bytes, %v", len(got), err)
	}
}

// TestProbesSharedAmongWaitingCalls: many patient calls waiting at once
// on a server that is slow but alive share one liveness probe: the
// server gets one HeadBucket per probeEvery, not one per call. Before,
// each call probed on its own: 20 streamed PUTs answered after 4 s with
// stallTimeout 2 s (a probe every 0.5 s) made 20 x 7 HeadBuckets, a load
// that grows with the very slowness it asks about.
func TestProbesSharedAmongWaitingCalls(t *testing.T) {
	setStallTimeout(t, 2*time.Second)
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	const answerIn = 4 * time.Second
	endpoint, probes := busyProxy(t, srv, bucket, 0, answerIn)
	st, err := New(context.Background(), Config{
		Bucket: bucket, Endpoint: endpoint, Region: srv.Region, Prefix: "reg/",
		AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true, PartSize: minPartSize,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	const calls = 20
	var wg sync.WaitGroup
	start := time.Now()
	for range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := randomBytes(256 << 10)
			d := blobstore.FromBytes(blobstore.SHA256, b)
			if _, err := st.putStream(ctx(t), d, int64(len(b)), bytes.NewReader(b), sha256.New()); err != nil {
				t.Errorf("streamed put to a slow server that answers: %v", err)
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	// One probe per probeEvery while any call waits, and a little slack
	// for a run whose calls did not all start at once.
	most := int64(took/probeEvery()) + 3
	if got := probes.Load(); got > most {
		t.Errorf("%d calls waiting %s made %d probes; want at most %d (one per %s)", calls, took.Round(time.Millisecond), got, most, probeEvery())
	}
}

// TestHungServerCallJoiningDuringProbe: a watched call that begins while
// the watch's probe of a hung server is already in flight (begun for an
// earlier call, so not its judge) fails within probeEvery + stallTimeout
// of its start. Before, the next probe began only once that one had timed
// out: the later call waited about twice stallTimeout (in the e2e drill, a
// closing PUT with no answer 50 s into the stop).
func TestHungServerCallJoiningDuringProbe(t *testing.T) {
	setStallTimeout(t, 4*time.Second)
	srv := s3test.Start(t)
	st := newStore(t, srv, srv.Bucket(t), "reg/")
	if err := srv.Pause(); err != nil {
		t.Skip(err) // no signals on this system
	}
	defer func() { _ = srv.Resume() }()
	complete := func() error { return st.complete(ctx(t), "reg/hung", "no-such-upload", nil) }
	first := make(chan error, 1)
	go func() { first <- complete() }()
	// The first call's first probe begins after probeEvery; join after it.
	time.Sleep(probeEvery() + probeEvery()/5)
	start := time.Now()
	err := complete()
	took := time.Since(start)
	bound := probeEvery() + stallTimeout.get() + time.Second
	t.Logf("the call that joined during a probe: %v after %s", err, took.Round(time.Millisecond))
	if !errors.Is(err, errStalled) || took > bound {
		t.Errorf("a call joining while a probe of a hung server is in flight: %v after %s; want errStalled within %s", err, took.Round(time.Millisecond), bound)
	}
	if err := <-first; !errors.Is(err, errStalled) {
		t.Errorf("the first call: %v; want errStalled", err)
	}
}

// TestHungServerSessionEnds: a commit or a cancel of a session with parts
// on a server that hangs fails with errStalled within one call's bound,
// not one bound per call it has left. Before, the commit read the stalled
// Stat as "no such blob" and went on to read the tail (twice
// stallTimeout: e2e TestReplicaStorageStoppedMidCommit's "no answer 50s
// into the stop"), and the cancel waited on each of its aborts, listings
// and deletes in turn.
func TestHungServerSessionEnds(t *testing.T) {
	setStallTimeout(t, 3*time.Second)
	srv := s3test.Start(t)
	st := newStore(t, srv, srv.Bucket(t), "reg/")
	bound := stallTimeout.get() + probeEvery() + time.Second
	for _, end := range []string{"commit", "cancel"} {
		t.Run(end, func(t *testing.T) {
			data := randomBytes(minPartSize + 1<<20) // a part and a tail
			sess, err := st.NewSession(ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := sess.Append(ctx(t), 0, bytes.NewReader(data)); err != nil {
				t.Fatal(err)
			}
			if err := srv.Pause(); err != nil {
				t.Skip(err) // no signals on this system
			}
			start := time.Now()
			if end == "commit" {
				_, err = sess.Commit(ctx(t), blobstore.FromBytes(blobstore.SHA256, data), int64(len(data)))
			} else {
				err = sess.Cancel(ctx(t))
			}
			took := time.Since(start)
			if rerr := srv.Resume(); rerr != nil {
				t.Fatal(rerr)
			}
			t.Logf("%s on a hung server: %v after %s", end, err, took.Round(time.Millisecond))
			if !errors.Is(err, errStalled) || took > bound {
				t.Errorf("%s on a hung server: %v after %s; want errStalled within %s", end, err, took.Round(time.Millisecond), bound)
			}
		})
	}
}

// pauseAfter is a blob's bytes that stop the server (pause) once the
// first n were read, as a server stopped mid-push does.
type pauseAfter struct {
	r     io.Reader
	n     int64
	pause func()
	once  sync.Once
}

func (s *pauseAfter) Read(p []byte) (int, error) {
	if s.n <= 0 {
		s.once.Do(s.pause)
		return s.r.Read(p)
	}
	if int64(len(p)) > s.n {
		p = p[:s.n]
	}
	n, err := s.r.Read(p)
	s.n -= int64(n)
	return n, err
}

// A Put into a multipart upload at the blob key (a blob of unknown size,
// a sha512 one) whose parts meet a hung server fails within one call's
// bound. Before, its abort of the upload waited out a bound of its own
// after the part's (7.3 s with stallTimeout 3 s, where the part failed
// after 4.1 s): the bounds added up past the request's, as the commit's
// did (TestHungServerSessionEnds).
func TestHungServerMultipartPut(t *testing.T) {
	setStallTimeout(t, 3*time.Second)
	srv := s3test.Start(t)
	st := newStore(t, srv, srv.Bucket(t), "reg/")
	bound := stallTimeout.get() + probeEvery() + time.Second
	for _, c := range []struct {
		name string
		alg  blobstore.Algorithm
		size func(int) int64
	}{
		{"unknown size", blobstore.SHA256, func(int) int64 { return -1 }},
		{"sha512", blobstore.SHA512, func(n int) int64 { return int64(n) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			data := randomBytes(minPartSize + 1<<20) // a part and a last one
			paused := false
			body := &pauseAfter{r: bytes.NewReader(data), n: minPartSize, pause: func() {
				if err := srv.Pause(); err != nil {
					t.Error(err)
					return
				}
				paused = true
			}}
			start := time.Now()
			_, err := st.Put(ctx(t), blobstore.FromBytes(c.alg, data), c.size(len(data)), body)
			took := time.Since(start)
			if paused {
				if rerr := srv.Resume(); rerr != nil {
					t.Fatal(rerr)
				}
			}
			t.Logf("Put on a server hung after its first part: %v after %s", err, took.Round(time.Millisecond))
			if !errors.Is(err, errStalled) || took > bound {
				t.Errorf("Put on a hung server: %v after %s; want errStalled within %s", err, took.Round(time.Millisecond), bound)
			}
			// The abort went on behind the Put, and lands once the
			// server continues.
			for deadline := time.Now().Add(2 * stallTimeout.get()); ; time.Sleep(100 * time.Millisecond) {
				out, err := st.client.ListMultipartUploads(ctx(t), &awss3.ListMultipartUploadsInput{Bucket: &st.bucket, Prefix: aws.String("reg/blobs/")})
				if err == nil && len(out.Uploads) == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the Put's multipart upload is still there %s after the server continued (%v)", 2*stallTimeout.get(), err)
				}
			}
		})
	}
}

// setStallTimeout makes the store's stall bound d for the rest of t, so
// a test of a hung server takes seconds.
func setStallTimeout(t *testing.T, d time.Duration) {
	old := stallTimeout.set(d)
	t.Cleanup(func() { stallTimeout.set(old) })
}
