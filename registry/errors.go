package registry

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"syscall"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/internal/logfield"
	"go.uber.org/zap/zapcore"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/cache"
)

// Error codes of the distribution spec (plus the few that the reference
// implementation added and clients know).
const (
	CodeBlobUnknown         = "BLOB_UNKNOWN"
	CodeBlobUploadInvalid   = "BLOB_UPLOAD_INVALID"
	CodeBlobUploadUnknown   = "BLOB_UPLOAD_UNKNOWN"
	CodeDigestInvalid       = "DIGEST_INVALID"
	CodeManifestBlobUnknown = "MANIFEST_BLOB_UNKNOWN"
	CodeManifestInvalid     = "MANIFEST_INVALID"
	CodeManifestUnknown     = "MANIFEST_UNKNOWN"
	CodeNameInvalid         = "NAME_INVALID"
	CodeNameUnknown         = "NAME_UNKNOWN"
	CodeSizeInvalid         = "SIZE_INVALID"
	CodeUnauthorized        = "UNAUTHORIZED"
	CodeDenied              = "DENIED"
	CodeUnsupported         = "UNSUPPORTED"
	CodeTooManyRequests     = "TOOMANYREQUESTS"
	CodeRangeInvalid        = "RANGE_INVALID"
	CodeTagInvalid          = "TAG_INVALID"
	CodePaginationInvalid   = "PAGINATION_NUMBER_INVALID"
	CodeNotFound            = "NOT_FOUND"
	CodeUnknown             = "UNKNOWN"
	// CodeStorageFull is ours: the spec has no code for a store that has
	// no room. It comes with 507 Insufficient Storage, which says "try
	// again later" as 5xx do; clients show the code and message.
	CodeStorageFull = "STORAGE_FULL"
	// CodeUnavailable (distribution's UNAVAILABLE) comes with 503:
	// credentials that cannot be checked now, or an engine the store
	// depends on (PostgreSQL, the object store) that did not answer; the
	// request may be retried as it is.
	CodeUnavailable = "UNAVAILABLE"
)

// Error is a protocol error: what the client gets in the JSON envelope and
// the status line. Handlers return it; only writeError renders it.
type Error struct {
	Code    string
	Status  int
	Message string
	// Detail is sent to the client as the envelope's "detail"; nil omits it.
	Detail any
	// Err is the cause, logged and never sent.
	Err error
	// Header holds extra response headers (Range and Location on a 416
	// of an upload, Allow on a 405, Content-Range on a blob 416).
	Header http.Header
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Code + ": " + e.Message + ": " + e.Err.Error()
	}
	return e.Code + ": " + e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// withHeader returns e with one more response header set.
func (e *Error) withHeader(k, v string) *Error {
	if e.Header == nil {
		e.Header = http.Header{}
	}
	e.Header.Set(k, v)
	return e
}

func newError(status int, code, msg string, cause error) *Error {
	return &Error{Code: code, Status: status, Message: msg, Err: cause}
}

func errBlobUnknown(cause error) *Error {
	return newError(http.StatusNotFound, CodeBlobUnknown, "blob unknown to registry", cause)
}

func errManifestUnknown(cause error) *Error {
	return newError(http.StatusNotFound, CodeManifestUnknown, "manifest unknown", cause)
}

func errUploadUnknown(cause error) *Error {
	return newError(http.StatusNotFound, CodeBlobUploadUnknown, "blob upload unknown to registry", cause)
}

func errDigestInvalid(msg string, cause error) *Error {
	return newError(http.StatusBadRequest, CodeDigestInvalid, msg, cause)
}

// errBadDigest is the answer to a digest that does not parse, the same
// wherever it came from (a blob's or a manifest's path, a query): one of
// an algorithm the registry does not support says so.
func errBadDigest(err error) *Error {
	if errors.Is(err, cache.ErrDigestUnsupported) {
		return errDigestInvalid("unsupported digest algorithm", err)
	}
	return errDigestInvalid("invalid digest", err)
}

func errManifestInvalid(msg string, cause error) *Error {
	return newError(http.StatusBadRequest, CodeManifestInvalid, msg, cause)
}

// errStorageFull: the store refused new bytes for lack of room. Nothing
// was stored, and the same request succeeds once space is freed.
func errStorageFull(cause error) *Error {
	return newError(http.StatusInsufficientStorage, CodeStorageFull, "storage is full", cause)
}

// storageFullError is errStorageFull when err comes from a full storage,
// else nil.
func storageFullError(err error) *Error {
	if cache.IsStorageFull(err) {
		return errStorageFull(err)
	}
	return nil
}

// errInternal classifies a store failure the handler did not expect. The
// store's ErrNameInvalid is a name or tag it cannot key: the client's
// mistake even if the grammar checks should have caught it first. A full
// storage is no bug either, whichever write ran into it.
func errInternal(cause error) *Error {
	if errors.Is(cause, cache.ErrNameInvalid) {
		return newError(http.StatusBadRequest, CodeNameInvalid, "invalid name", cause)
	}
	if e := storageFullError(cause); e != nil {
		return e
	}
	if errors.Is(cause, cache.ErrUnavailable) {
		return newError(http.StatusServiceUnavailable, CodeUnavailable, "storage is temporarily unavailable, retry", cause).
			withHeader("Retry-After", "5")
	}
	if readOnlyStorage(cause) {
		// The storage's filesystem was made read-only (by the operator,
		// or by the kernel after disk errors): no bug of the request or
		// the registry, and gone once it is writable again.
		return newError(http.StatusServiceUnavailable, CodeUnavailable, "storage is read-only, retry", cause).
			withHeader("Retry-After", "5")
	}
	if outOfFiles(cause) {
		// The process or the system has no file descriptor left (too
		// many connections open): no bug, and gone once some close.
		return newError(http.StatusServiceUnavailable, CodeUnavailable, "server is out of file descriptors, retry", cause).
			withHeader("Retry-After", "5")
	}
	return newError(http.StatusInternalServerError, CodeUnknown, "internal error", cause)
}

// StatusClientClosedRequest is nginx's 499 "client closed request": the
// status recorded (metrics, the log line, Caddy's access log) for a
// request that failed because its client went away (closed the
// connection, reset the stream) while it waited. Nobody receives it. It
// is a 4xx because the leaving is the client's doing, and must not be a
// 5xx: the server did not fail, and 5xx rates are what operators alert on.
const StatusClientClosedRequest = 499

// clientGone reports whether err is r ending because its client left:
// the request's own context is done and err is that context's error.
// A deadline or cancel from elsewhere (an upstream's timeout, the store's
// own) while the client still waits is not, and keeps its status; so is
// a 4xx, which the handler classified as the client's mistake already.
func clientGone(r *http.Request, e *Error, err error) bool {
	gone := r.Context().Err()
	return gone != nil && e.Status >= 500 && errors.Is(err, gone)
}

type envelope struct {
	Errors []envelopeError `json:"errors"`
}

type envelopeError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Detail  any    `json:"detail,omitempty"`
}

// writeError is the one place an error becomes a response: the status, the
// JSON envelope and a log line with the repository, operation and reason.
// Anything that is not an *Error is an internal failure (500): client
// mistakes are always classified by the handlers. A failure that is only
// the client having left is StatusClientClosedRequest, logged at info.
func (h *Handler) writeError(w http.ResponseWriter, r *http.Request, rc *request, err error) {
	var e *Error
	if !errors.As(err, &e) {
		e = errInternal(err)
	}
	if clientGone(r, e, err) {
		e = newError(StatusClientClosedRequest, CodeUnknown, "client closed request", err)
	}
	level := zapcore.InfoLevel
	switch {
	case e.Status == http.StatusInsufficientStorage:
		// The operator's to fix, but no fault: the store logs the
		// state change itself, and each refusal is one more of the same.
		level = zapcore.WarnLevel
	case e.Status >= 500:
		level = zapcore.ErrorLevel
	case rc.op == OpPing && e.Status == http.StatusUnauthorized:
		// A client's first request before it logs in: the challenge is
		// the handshake, not a fault (the Authorizer audits nothing).
		level = zapcore.DebugLevel
	case r.Method == http.MethodHead && e.Status == http.StatusNotFound:
		// Existence checks before a push: routine, and the client gets no
		// body anyway.
		level = zapcore.DebugLevel
	}
	if ce := h.cfg.Logger.Check(level, "registry error"); ce != nil {
		reason := e.Message
		if e.Err != nil {
			reason = e.Err.Error()
		}
		ce.Write(
			// What the request carried is cut to logfield.Max: an
			// anonymous refusal must not cost the log disk more
			// than the request did.
			logfield.String("repo", rc.name),
			zap.String("op", rc.op),
			zap.String("code", e.Code),
			zap.Int("status", e.Status),
			logfield.String("reason", reason),
			logfield.String("method", r.Method),
			logfield.String("uri", r.RequestURI),
		)
	}
	if !bodyPending(r) {
		e.Render(w, r)
		return
	}
	// Whatever the client still sends is not used (an error refuses the
	// request as a whole): net/http would otherwise drain up to 256 KiB
	// of it before answering, for a caller who may not send it, and wait
	// as long as the client withholds it.
	w.Header().Set("Connection", "close")
	e.Render(w, r)
	authscope.LingerUnreadBody(w, r.Body)
}

// bodyPending reports whether an HTTP/1 request has body bytes the
// handler has not read (HTTP/2 resets the stream instead).
func bodyPending(r *http.Request) bool {
	if r.ProtoMajor != 1 || r.ContentLength == 0 {
		return false
	}
	cb, ok := r.Body.(*countingBody)
	return ok && !cb.eof && cb.err == nil
}

// NewError is an *Error with the given status, spec code, message and
// cause (logged, never sent).
func NewError(status int, code, msg string, cause error) *Error {
	return newError(status, code, msg, cause)
}

// Render writes e: the status and the JSON envelope (no body for HEAD).
// It does not log; the caller does, with what it knows of the request.
func (e *Error) Render(w http.ResponseWriter, r *http.Request) {
	body, mErr := json.Marshal(envelope{Errors: []envelopeError{{Code: e.Code, Message: e.Message, Detail: e.Detail}}})
	if mErr != nil {
		// Detail came from us; a value that does not marshal is a bug,
		// but the client still gets a well-formed envelope.
		body, _ = json.Marshal(envelope{Errors: []envelopeError{{Code: e.Code, Message: e.Message}}})
	}
	hd := w.Header()
	// A blob's answer says max-age of a year before its backend is asked
	// (blobs.go): a 404 or 503 must not keep it, or a cache in front
	// keeps the refusal as long. An error of its own may set one.
	hd.Del("Cache-Control")
	for k, v := range e.Header {
		hd[k] = v
	}
	hd.Set("Content-Type", "application/json; charset=utf-8")
	hd.Set("Content-Length", strconv.Itoa(len(body)))
	// Headers a success path may have set before failing do not belong
	// on an error.
	hd.Del("Docker-Content-Digest")
	hd.Del("ETag")
	w.WriteHeader(e.Status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}

// readOnlyStorage reports whether err is a write refused by a read-only
// filesystem.
func readOnlyStorage(err error) bool {
	return errors.Is(err, syscall.EROFS)
}

// outOfFiles reports whether err is the process's (EMFILE) or the
// system's (ENFILE) file descriptor limit.
func outOfFiles(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}
