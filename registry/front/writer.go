package front

import (
	"bytes"
	"io"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/internal/logfield"

	"github.com/caddy-oci/caddy-oci/registry"
)

// responseWriter rewrites headers just before the status line goes out
// and, for the few small bodies that name repositories, collects the body
// (bounded) to rewrite it at the end. Every other body is passed straight
// on, with Flush and ReadFrom reaching the client's writer, so blobs
// stream as the backend sends them.
type responseWriter struct {
	http.ResponseWriter
	view *view
	head bool // a HEAD request: no body will come

	wroteHeader bool
	collect     bool // the body is rewritten at finish
	status      int
	buf         bytes.Buffer
	tooBig      bool
	gone        bool  // the client left while its body waited for the budget
	held        int64 // of the front's rewrite budget, until release
}

// hold takes the share of the front's rewrite budget a body to collect
// needs before its first byte is: its Content-Length, or MaxRewrite when
// it declares none. Taking it whole at once (never more while holding
// some) is what keeps this free of deadlock. A body declared over
// MaxRewrite takes none: it is not collected.
func (w *responseWriter) hold(h http.Header) {
	f := w.view.front
	n := f.cfg.MaxRewrite
	if cl, err := strconv.ParseInt(h.Get("Content-Length"), 10, 64); err == nil && cl >= 0 {
		if cl > f.cfg.MaxRewrite {
			w.tooBig = true
			return
		}
		n = max(cl, 1)
	}
	if err := f.rewrites.Acquire(w.view.req.Context(), n); err != nil {
		w.gone = true
		return
	}
	w.held = n
}

// release gives back w's share of the rewrite budget; it may be called
// more than once.
func (w *responseWriter) release() {
	if w.held > 0 {
		w.view.front.rewrites.Release(w.held)
		w.held = 0
	}
}

func (w *responseWriter) WriteHeader(code int) {
	if w.wroteHeader {
		return
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		// Informational (103 Early Hints): more headers follow.
		w.ResponseWriter.WriteHeader(code)
		return
	}
	w.wroteHeader = true
	h := w.Header()
	w.view.headers(h)
	if !w.head && w.view.rewritesBody(code, h) {
		w.collect, w.status = true, code
		w.hold(h)
		return
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *responseWriter) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.collect {
		return w.ResponseWriter.Write(p)
	}
	if w.gone {
		return len(p), nil // nobody to tell
	}
	if w.tooBig || int64(w.buf.Len()+len(p)) > min(w.view.front.cfg.MaxRewrite, max(w.held, 0)) {
		// Keep reading so the backend's response completes; what it
		// said is not passed on.
		w.tooBig = true
		return len(p), nil
	}
	return w.buf.Write(p)
}

// ReadFrom lets io.Copy use the client writer's ReadFrom (sendfile, large
// buffers) for bodies that pass through.
func (w *responseWriter) ReadFrom(r io.Reader) (int64, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok && !w.collect {
		return rf.ReadFrom(r)
	}
	return io.Copy(writerOnly{w}, r)
}

// writerOnly hides ReadFrom, so io.Copy above does not recurse.
type writerOnly struct{ io.Writer }

// Flush sends what the backend sent so far; a body being collected is
// sent at finish.
func (w *responseWriter) Flush() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.collect {
		return
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

// Unwrap gives http.ResponseController the client's writer.
func (w *responseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// finish writes a collected body, rewritten. A body that cannot be
// rewritten is never passed on as it came: it names the backend's
// repository.
func (w *responseWriter) finish() error {
	if !w.collect || w.gone {
		return nil
	}
	defer w.release()
	log := w.view.front.log
	var body []byte
	var err error
	if w.tooBig {
		err = errTooBig
	} else {
		body, err = w.view.body(w.status, w.buf.Bytes())
	}
	h := w.Header()
	if err != nil {
		log.Error("backend response not rewritable", zap.Int("status", w.status), logfield.String("uri", w.view.req.RequestURI), zap.Error(err))
		if w.status < 400 {
			for _, k := range []string{"Content-Length", "Content-Type", "Link", "Docker-Content-Digest", "Etag"} {
				h.Del(k)
			}
			e := registry.NewError(http.StatusBadGateway, registry.CodeUnknown, "backend response could not be translated", err)
			e.Render(w.ResponseWriter, w.view.req)
			return nil
		}
		// An error body we cannot read: keep the status and code, with
		// an envelope of our own instead of the backend's words.
		h.Del("Content-Length")
		e := registry.NewError(w.status, registry.CodeUnknown, http.StatusText(w.status), err)
		e.Header = http.Header{"Www-Authenticate": h.Values("Www-Authenticate")}
		e.Render(w.ResponseWriter, w.view.req)
		return nil
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.ResponseWriter.WriteHeader(w.status)
	// The share is held until the body is out: a client that reads it
	// slowly holds it for rewriteWriteTime at most.
	rc := http.NewResponseController(w.ResponseWriter)
	deadline := len(body) > 64<<10 && rc.SetWriteDeadline(time.Now().Add(rewriteWriteTime(len(body)))) == nil
	_, err = w.ResponseWriter.Write(body)
	if deadline {
		_ = rc.Flush()
		// The connection may serve more requests: no deadline for them.
		_ = rc.SetWriteDeadline(time.Time{})
	}
	return err
}

// rewriteWriteTime is how long a rewritten body of size bytes may take to
// go out: a minute, or longer for a client at 32 KiB/s.
func rewriteWriteTime(size int) time.Duration {
	return max(time.Minute, time.Duration(size/(32<<10))*time.Second)
}
