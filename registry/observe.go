package registry

import (
	"io"
	"net/http"
)

// observedWriter counts what a handler sends. It keeps the abilities of the
// writer it wraps that matter here: ReadFrom, so http.ServeContent on an
// *os.File still reaches net/http's sendfile path, and Flush.
type observedWriter struct {
	http.ResponseWriter
	status  int
	written int64
}

func (w *observedWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *observedWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.written += int64(n)
	return n, err
}

// ReadFrom hands the copy to the underlying writer when it can do it
// itself (net/http's response uses sendfile for an *os.File source).
func (w *observedWriter) ReadFrom(src io.Reader) (int64, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	var n int64
	var err error
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(src)
	} else {
		buf := make([]byte, 256<<10)
		n, err = io.CopyBuffer(writerOnly{w.ResponseWriter}, src, buf)
	}
	w.written += n
	return n, err
}

// FlushError reaches the server's writer through wrappers that do not
// implement http.Flusher themselves (Caddy's do not).
func (w *observedWriter) FlushError() error {
	return http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *observedWriter) Flush() { _ = w.FlushError() }

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *observedWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *observedWriter) statusCode() int {
	if w.status == 0 {
		return http.StatusOK
	}
	return w.status
}

// writerOnly hides any ReadFrom method so io.Copy does not recurse.
type writerOnly struct{ io.Writer }

// countingBody counts the request bytes a handler read.
type countingBody struct {
	rc  io.ReadCloser
	n   int64
	eof bool  // read to its end
	err error // first read error other than io.EOF
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.n += int64(n)
	if err == io.EOF {
		b.eof = true
	}
	if err != nil && err != io.EOF && b.err == nil {
		b.err = err
	}
	return n, err
}

func (b *countingBody) Close() error { return b.rc.Close() }
