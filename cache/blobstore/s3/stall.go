package s3

// A hung S3 server (a stopped process, a black-holed network) accepts
// connections and answers nothing. Every call here is bounded so that a
// request waiting on it gets its 503 in seconds rather than after the
// transport's two-minute header timeout times the SDK's three attempts,
// and a blob GET whose body stops flowing is cut instead of holding its
// client, goroutine and connections for as long as the client waits.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// stallTimeout is how long the server may go without progress: without
// answering a call that makes it do little (all but the patient ones,
// below), without taking request bytes, without sending the next bytes
// of an object. A healthy server is far quicker; one that takes longer
// is treated as unavailable (503 to the client, who retries).
var stallTimeout = newDuration(30 * time.Second) // settable for tests

// atomicDuration is a time.Duration read and set at once: tests shorten
// stallTimeout while calls that outlive an earlier test (an abort looked
// at again behind its caller) still read it.
type atomicDuration struct{ ns atomic.Int64 }

func newDuration(d time.Duration) *atomicDuration {
	a := new(atomicDuration)
	a.ns.Store(int64(d))
	return a
}

func (a *atomicDuration) get() time.Duration { return time.Duration(a.ns.Load()) }

// set makes it d and returns what it was.
func (a *atomicDuration) set(d time.Duration) time.Duration {
	return time.Duration(a.ns.Swap(int64(d)))
}

// minTransferRate is the slowest pace at which a request body in memory
// (a part, a small blob) must reach the server: its call's answer may
// take stallTimeout plus its length at this rate. It is low on purpose:
// parts share the link with each other and with everything else, and a
// slow but moving upload must not fail; a stopped one fails sooner
// anyway, by stallConn's write deadline once the socket's buffers fill.
const minTransferRate = 64 << 10 // bytes per second

// errStalled: the server made no progress for stallTimeout.
var errStalled = errors.New("s3: the server did not answer in time")

// stalled reports whether err is a call's failure on a hung server: a
// sequence of calls stops at it rather than wait each one's bound out.
func stalled(err error) bool { return errors.Is(err, errStalled) }

type patientKey struct{}

// patient marks a call whose server works in proportion to the blob
// before it answers (completing a multipart upload; a streamed PUT that
// the server may checksum and sync after its last byte): its answer has
// no deadline of its own, only the server's liveness (watchAlive). Its
// body, if any, is still bounded by the write deadline of stallConn.
func patient(ctx context.Context) context.Context {
	return context.WithValue(ctx, patientKey{}, true)
}

// probeEvery is how often a long call asks whether the server is still
// alive: a hung server fails it within probeEvery + stallTimeout.
func probeEvery() time.Duration { return stallTimeout.get() / 4 }

// boundCalls returns an Initialize middleware, so its deadline covers the
// SDK's retries too: the call as a whole answers within stallTimeout
// (plus its body's time at minTransferRate), or fails with errStalled.
// A GetObject's body then gets a stall guard of its own. A patient call
// has no deadline, and is watched with probe instead (watchAlive); so is
// a call with a body, whose deadline grows with its length: a body the
// socket's buffers take whole (a 6 MiB part on loopback) never meets
// stallConn's write deadline, and a closing PUT whose last part met a
// stopped server waited out that deadline, 30 s + 96 s, before its 503.
func boundCalls(probe *prober) func(context.Context, middleware.InitializeInput, middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
	return func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
		if ctx.Value(patientKey{}) != nil {
			return watchAlive(ctx, in, next, probe)
		}
		if bodyLen(in) > 0 {
			bounded := middleware.InitializeHandlerFunc(func(ctx context.Context, in middleware.InitializeInput) (middleware.InitializeOutput, middleware.Metadata, error) {
				return boundCall(ctx, in, next)
			})
			return watchAlive(ctx, in, bounded, probe)
		}
		return boundCall(ctx, in, next)
	}
}

// bodyLen is the length of the request body of a call that sends one, 0
// for any other.
func bodyLen(in middleware.InitializeInput) int64 {
	var n *int64
	switch p := in.Parameters.(type) {
	case *awss3.PutObjectInput:
		n = p.ContentLength
	case *awss3.UploadPartInput:
		n = p.ContentLength
	}
	if n == nil {
		return 0
	}
	return *n
}

// watchAlive runs a call while asking the server, every probeEvery, a
// question it answers at once (probe: itself a bounded call). A server
// busy assembling a large object, or taking a large body, still answers
// it; a hung one (a stopped process, a black-holed network) does not, and
// the call fails with errStalled: a probe that times out, or two in a row
// that get no answer at all (refused, or a dial that timed out). Before,
// a patient call was bounded only by the transport's two-minute header
// timeout (times the SDK's attempts). The calls waiting at once share the
// probes (prober).
func watchAlive(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler, p *prober) (middleware.InitializeOutput, middleware.Metadata, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// The probe is neither patient nor watched, and is shared by every
	// call waiting on this client at once (prober).
	leave := p.join(cancel)
	out, md, err := next.HandleInitialize(ctx, in)
	stalled := errors.Is(context.Cause(ctx), errStalled)
	// The last call to leave ends the probing and waits for it, so no
	// goroutine is left probing (or reading the stall settings) behind
	// the calls.
	leave()
	if err != nil && stalled {
		return out, md, fmt.Errorf("%w (no answer to a probe in %s): %v", errStalled, stallTimeout.get(), err)
	}
	return out, md, err
}

// answered reports whether err carries the server's HTTP answer (any
// status): a server that answers is alive, whatever it says. The SDK
// wraps a request that got no answer (refused, reset, timed out) in a
// ResponseError too, with no status.
func answered(err error) bool {
	var re *smithyhttp.ResponseError
	return errors.As(err, &re) && re.Response != nil && re.Response.Response != nil && re.Response.StatusCode > 0
}

// boundCall is boundCalls' bound on a call that is not patient.
func boundCall(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
	limit := stallTimeout.get()
	if n := bodyLen(in); n > 0 {
		limit += time.Duration(n / minTransferRate * int64(time.Second))
	}
	ctx, cancel := context.WithCancelCause(ctx)
	timer := time.AfterFunc(limit, func() { cancel(errStalled) })
	out, md, err := next.HandleInitialize(ctx, in)
	timer.Stop()
	if err != nil {
		cancel(nil)
		if errors.Is(context.Cause(ctx), errStalled) {
			// Not the SDK's error as such: it wraps context.Canceled,
			// which would read as the client having left.
			return out, md, fmt.Errorf("%w (%s): %v", errStalled, limit, err)
		}
		return out, md, err
	}
	if g, ok := out.Result.(*awss3.GetObjectOutput); ok && g.Body != nil {
		g.Body = newGuardedBody(g.Body, cancel)
		return out, md, nil
	}
	cancel(nil)
	return out, md, nil
}

// guardedBody is an object's body that fails with errStalled when one
// Read waits stallTimeout for bytes, and ends its call's context on
// Close.
type guardedBody struct {
	rc     io.ReadCloser
	cancel context.CancelCauseFunc
	timer  *time.Timer
	once   sync.Once
}

func newGuardedBody(rc io.ReadCloser, cancel context.CancelCauseFunc) *guardedBody {
	b := &guardedBody{rc: rc, cancel: cancel}
	b.timer = time.AfterFunc(time.Hour, func() { cancel(errStalled) })
	b.timer.Stop()
	return b
}

func (b *guardedBody) Read(p []byte) (int, error) {
	b.timer.Reset(stallTimeout.get())
	n, err := b.rc.Read(p)
	if !b.timer.Stop() && err != nil && !errors.Is(err, errStalled) {
		return n, fmt.Errorf("%w: no bytes for %s: %v", errStalled, stallTimeout.get(), err)
	}
	return n, err
}

func (b *guardedBody) Close() error {
	err := b.rc.Close()
	b.once.Do(func() {
		b.timer.Stop()
		b.cancel(nil)
	})
	return err
}

// stallConn is a connection to the server whose every write must be
// taken within stallTimeout: a server that stops reading a request body
// (any call's, the streamed blob PUT's included) fails it instead of
// blocking it for as long as the client waits.
type stallConn struct{ net.Conn }

func (c stallConn) Write(p []byte) (int, error) {
	if err := c.SetWriteDeadline(time.Now().Add(stallTimeout.get())); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

// stallDialer wraps dial's connections in stallConn.
func stallDialer(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return stallConn{c}, nil
	}
}
