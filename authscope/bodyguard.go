package authscope

import (
	"io"
	"net/http"
	"time"
)

// GuardUnreadBody returns w and r such that an error answer (4xx, 5xx)
// written before r's body was read to its end closes an HTTP/1
// connection. net/http would otherwise read up to 256 KiB of the unread
// body before sending the answer, and wait as long as a client withholds
// it: every refusal that may leave a body unread goes through here.
// (HTTP/2 resets the stream instead and needs nothing.) The caller runs
// finish once the answer is written; see LingerUnreadBody.
func GuardUnreadBody(w http.ResponseWriter, r *http.Request) (http.ResponseWriter, *http.Request, func()) {
	if r.ProtoMajor != 1 || r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody {
		return w, r, func() {}
	}
	body := &trackedBody{ReadCloser: r.Body}
	r2 := *r
	r2.Body = body
	g := &guardedWriter{ResponseWriter: w, body: body}
	return g, &r2, func() {
		if g.closing {
			LingerUnreadBody(g.ResponseWriter, body)
		}
	}
}

// lingerFor is how long a refused request's body is still read after the
// answer: what net/http itself waits before closing (rstAvoidanceDelay).
const lingerFor = 500 * time.Millisecond

// LingerUnreadBody is called after an error answer was written with
// `Connection: close` while the client may still be sending its body.
// Closing a socket that holds unread bytes makes the kernel send a reset,
// and a client still writing its body sees that reset on its write and
// may give up before reading the answer: a push refused for a full disk
// would show a reset connection instead of 507. So the answer is flushed
// and the body read and discarded for a short while before the handler
// returns. net/http does the same when it closes early, but only when the
// body it handed out is still the request's: Caddy wraps it (its idle
// read timeout), which turns that behaviour off.
func LingerUnreadBody(w http.ResponseWriter, body io.Reader) {
	rc := http.NewResponseController(w)
	if rc.Flush() != nil || rc.SetReadDeadline(time.Now().Add(lingerFor)) != nil {
		return
	}
	_, _ = io.Copy(io.Discard, body)
}

// trackedBody notes whether its reader reached the end.
type trackedBody struct {
	io.ReadCloser
	done bool
}

func (b *trackedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.done = true
	}
	return n, err
}

// guardedWriter adds `Connection: close` to an error status while the
// body is unread.
type guardedWriter struct {
	http.ResponseWriter
	body    *trackedBody
	wrote   bool
	closing bool
}

func (g *guardedWriter) WriteHeader(status int) {
	if !g.wrote && status >= 400 && !g.body.done {
		g.Header().Set("Connection", "close")
		g.closing = true
	}
	g.wrote = true
	g.ResponseWriter.WriteHeader(status)
}

func (g *guardedWriter) Write(p []byte) (int, error) {
	if !g.wrote {
		g.WriteHeader(http.StatusOK)
	}
	return g.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach the server's writer.
func (g *guardedWriter) Unwrap() http.ResponseWriter { return g.ResponseWriter }
