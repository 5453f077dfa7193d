package authscope

import (
	"io"
	"net/http"
)

// GuardUnreadBody returns w and r such that an error answer (4xx, 5xx)
// written before r's body was read to its end closes an HTTP/1
// connection. net/http would otherwise read up to 256 KiB of the unread
// body before sending the answer, and wait as long as a client withholds
// it: every refusal that may leave a body unread goes through here.
// (HTTP/2 resets the stream instead and needs nothing.)
func GuardUnreadBody(w http.ResponseWriter, r *http.Request) (http.ResponseWriter, *http.Request) {
	if r.ProtoMajor != 1 || r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody {
		return w, r
	}
	body := &trackedBody{ReadCloser: r.Body}
	r2 := *r
	r2.Body = body
	return &guardedWriter{ResponseWriter: w, body: body}, &r2
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
	body  *trackedBody
	wrote bool
}

func (g *guardedWriter) WriteHeader(status int) {
	if !g.wrote && status >= 400 && !g.body.done {
		g.Header().Set("Connection", "close")
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
