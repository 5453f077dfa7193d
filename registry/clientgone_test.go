package registry

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/fs"
	"github.com/caddy-oci/caddy-oci/cache/composite"
	"github.com/caddy-oci/caddy-oci/cache/coord"
	"github.com/caddy-oci/caddy-oci/cache/metastore/badgermeta"
	"github.com/caddy-oci/caddy-oci/internal/trickle"
)

// firstRead is a request body that says when the handler first reads it.
type firstRead struct {
	io.ReadCloser
	once *sync.Once
	read chan struct{}
}

func (b firstRead) Read(p []byte) (int, error) {
	b.once.Do(func() { close(b.read) })
	return b.ReadCloser.Read(p)
}

// TestClientGoneWhileSessionBusy: a commit or cancel of an upload session
// waits (up to two minutes) while a chunk of that session arrives on
// another replica. A client that gives up meanwhile is no server fault:
// its request is recorded as 499 (client closed request), not a 5xx, and
// nothing is logged at error level. Before, it was a 500 "internal error"
// at error level, which nobody received.
func TestClientGoneWhileSessionBusy(t *testing.T) {
	for _, method := range []string{http.MethodPut, http.MethodDelete} {
		t.Run(method, func(t *testing.T) {
			// Two replicas of one node: one metadata database and
			// in-process leases, one blob folder.
			meta, err := badgermeta.Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = meta.Close() })
			leases := coord.NewLocal()
			blobDir := t.TempDir()
			replica := func() *composite.Store {
				blobs, err := fs.New(fs.Options{Dir: blobDir})
				if err != nil {
					t.Fatal(err)
				}
				st, err := composite.New(composite.Options{Blobs: blobs, Meta: meta, Leases: leases})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(st.Close)
				return st
			}

			// a answers the commit or cancel; b takes the trickling chunk
			// and says when the chunk's body is first read: by then it
			// holds the session's lease.
			logCore, logs := observer.New(zapcore.DebugLevel)
			obs := &recordingObserver{}
			arrived := make(chan struct{})
			var arrivedOnce sync.Once
			ha := New(Config{Store: replica(), Logger: zap.New(logCore), Observer: obs})
			srvA := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == method {
					arrivedOnce.Do(func() { close(arrived) })
				}
				ha.ServeHTTP(w, r)
			}))
			t.Cleanup(srvA.Close)
			holding := make(chan struct{})
			var holdingOnce sync.Once
			hb := New(Config{Store: replica(), Logger: zaptest.NewLogger(t)})
			srvB := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodPatch {
					r.Body = firstRead{ReadCloser: r.Body, once: &holdingOnce, read: holding}
				}
				hb.ServeHTTP(w, r)
			}))
			t.Cleanup(srvB.Close)

			resp, err := http.Post(srvA.URL+"/v2/team/app/blobs/uploads/", "", nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				t.Fatalf("POST upload: %s", resp.Status)
			}
			loc := resp.Header.Get("Location")

			body, stop := trickle.New(50 * time.Millisecond)
			defer stop()
			req, _ := http.NewRequest(http.MethodPatch, srvB.URL+loc, body)
			req.ContentLength = -1
			req.Header.Set("Content-Type", "application/octet-stream")
			patched := make(chan error, 1)
			go func() {
				resp, err := http.DefaultClient.Do(req)
				if err == nil {
					resp.Body.Close()
				}
				patched <- err
			}()
			select {
			case <-holding:
			case <-time.After(30 * time.Second):
				t.Fatal("the trickling PATCH on b never reached the store")
			}

			// The client leaves while its request waits on a.
			u := srvA.URL + loc
			if method == http.MethodPut {
				u += "?digest=" + cache.FromBytes(cache.SHA256, nil).String()
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req, _ = http.NewRequestWithContext(ctx, method, u, nil)
			answered := make(chan error, 1)
			go func() {
				resp, err := http.DefaultClient.Do(req)
				if err == nil {
					resp.Body.Close()
					t.Errorf("%s beside a trickling chunk answered %s before its client left", method, resp.Status)
				}
				answered <- err
			}()
			select {
			case <-arrived:
			case <-time.After(30 * time.Second):
				t.Fatalf("the %s never reached a", method)
			}
			time.Sleep(300 * time.Millisecond) // let it wait on the lease; either way its context ends below
			cancel()
			<-answered

			op := OpUploadFinish
			if method == http.MethodDelete {
				op = OpUploadCancel
			}
			var got *observation
			for deadline := time.Now().Add(30 * time.Second); got == nil && time.Now().Before(deadline); {
				obs.mu.Lock()
				for _, o := range obs.requests {
					if o.op == op {
						got = &o
					}
				}
				obs.mu.Unlock()
				if got == nil {
					time.Sleep(20 * time.Millisecond)
				}
			}
			if got == nil {
				t.Fatalf("a recorded no %s after its client left", op)
			}
			if got.status != StatusClientClosedRequest {
				t.Errorf("%s whose client left recorded as %d, want %d", op, got.status, StatusClientClosedRequest)
			}
			if errs := logs.Filter(func(e observer.LoggedEntry) bool { return e.Level >= zapcore.ErrorLevel }).All(); len(errs) != 0 {
				t.Errorf("a client that left was logged at error level: %v", errs)
			}
			if n := logs.FilterField(zap.Int("status", StatusClientClosedRequest)).FilterField(zap.String("op", op)).Len(); n != 1 {
				t.Errorf("%d log lines of the %s with status %d, want 1: %v", n, op, StatusClientClosedRequest, logs.All())
			}

			// The chunk on b goes on untouched.
			stop()
			if err := <-patched; err != nil {
				t.Fatalf("the trickling PATCH: %v", err)
			}
		})
	}
}

// A client that leaves before a cold mirror blob's fill has upstream's
// answer is recorded as 499, not as a 200 that never went out.
func TestClientGoneBeforeColdBlob(t *testing.T) {
	env := newMirrorEnv(t)
	img := randomImage(t, 4096, 1)
	env.up.pushImage("library/app", "v1", img)
	layer, _ := layerOf(t, img)
	env.up.set(func(u *fakeUpstream) { u.rtt = 500 * time.Millisecond })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if resp, err := env.get(ctx, "/v2/library/app/blobs/"+layer); err == nil {
		resp.Body.Close()
		t.Fatalf("GET answered %d before upstream did", resp.StatusCode)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if o := env.obs.last(); o.op != "" {
			if o.status != StatusClientClosedRequest {
				t.Fatalf("recorded %+v, want status %d", o, StatusClientClosedRequest)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the request was never recorded")
		}
	}
}
