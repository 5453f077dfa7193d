// Package outbound builds the HTTP clients this process uses to talk to
// servers the operator named: upstream registries, token services, OIDC
// providers, object stores. Naming a server is not trusting every answer
// it sends: its answers are read here, so what one answer may cost is
// bounded here, the same for every client.
package outbound

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// MaxResponseHeaderBytes bounds the headers of one answer. Go's default
// is 10 MiB; an answer's headers are held whole while its body is read,
// and no budget of the registry's counts them, so a hostile or broken
// server answering many requests with megabytes of headers would grow
// the process by as much per request. Registries, storage services,
// token services and identity providers send a few KiB.
const MaxResponseHeaderBytes = 64 << 10

// Transport returns a new transport like Go's default one (proxies from
// the environment, HTTP/2, the same dial, TLS and idle timeouts) with
// the header bound.
func Transport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxResponseHeaderBytes = MaxResponseHeaderBytes
	return t
}

// Client returns a client over a new Transport that gives up on a
// request, its body included, after timeout.
func Client(timeout time.Duration) *http.Client {
	return &http.Client{Transport: Transport(), Timeout: timeout}
}

// ErrBodyTooLarge is a body read past the bound LimitBodies set.
var ErrBodyTooLarge = errors.New("answer larger than this client accepts")

// LimitBodies wraps rt so that no answer's body can be read past max
// bytes: the read that would go past it fails with ErrBodyTooLarge. For
// clients whose callers read answers whole with no bound of their own
// (go-oidc reads a discovery document with io.ReadAll).
func LimitBodies(rt http.RoundTripper, max int64) http.RoundTripper {
	return limitBodies{rt: rt, max: max}
}

type limitBodies struct {
	rt  http.RoundTripper
	max int64
}

func (l limitBodies) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := l.rt.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	resp.Body = &limitedBody{ReadCloser: resp.Body, left: l.max, max: l.max}
	return resp, nil
}

type limitedBody struct {
	io.ReadCloser
	left, max int64
	// over is set once the body went past max: every later read
	// returns it, where reading on would find the end of the body and
	// say io.EOF, as if it had ended at the bound.
	over error
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.over != nil {
		return 0, b.over
	}
	if b.left <= 0 {
		// One byte more tells a body of exactly max bytes from a longer one.
		var one [1]byte
		n, err := b.ReadCloser.Read(one[:])
		if n > 0 {
			b.over = fmt.Errorf("%w: more than %d bytes", ErrBodyTooLarge, b.max)
			return 0, b.over
		}
		return 0, err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	return n, err
}
