package caddymodule

// The writer requests that pass the registry by are answered through.

import (
	"io"
	"net/http"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-oci/caddy-oci/authscope"
)

// ownCookiesWriter is the writer the next handler of the site answers
// through (a reverse_proxy to an app beside the registry): the sign-in
// cookies are this server's, so the next handler's Set-Cookie of them is
// dropped, as its request never carries them (DropSignInCookies).
type ownCookiesWriter struct {
	caddyhttp.ResponseWriterWrapper
	started bool
}

func (w *ownCookiesWriter) WriteHeader(status int) {
	if !w.started {
		// 1xx included: an Early Hints answer carries headers as well.
		authscope.DropSignInSetCookies(w.Header())
		w.started = status >= http.StatusOK || status == http.StatusSwitchingProtocols
	}
	w.ResponseWriterWrapper.WriteHeader(status)
}

func (w *ownCookiesWriter) Write(p []byte) (int, error) {
	if !w.started {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriterWrapper.Write(p)
}

func (w *ownCookiesWriter) ReadFrom(r io.Reader) (int64, error) {
	if !w.started {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriterWrapper.ReadFrom(r)
}

// FlushError sends the headers through WriteHeader first: a flush
// before any write would otherwise send them unchecked.
func (w *ownCookiesWriter) FlushError() error {
	if !w.started {
		w.WriteHeader(http.StatusOK)
	}
	return http.NewResponseController(w.ResponseWriter).Flush()
}
