package caddymodule

// /_oci/sync: the state of the scheduled syncs (GET) and a run now
// (POST), for admins only.

import (
	"encoding/json"
	"errors"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/registry"
	"github.com/caddy-oci/caddy-oci/registry/mirrorsync"
)

// SyncPath is where the sync status is served.
const SyncPath = registry.OwnRoot + "/sync"

// syncStatus is the body of GET /_oci/sync.
type syncStatus struct {
	Syncs []mirrorsync.Status `json:"syncs"`
}

// serveSync answers /_oci/sync. Who may: with auth, a caller the policy
// makes admin (read for GET, update for POST) or whose token grants
// registry:admin:<action>; without auth, loopback clients only, since
// nobody is an admin then (a proxy's request counts as a loopback
// client's only if every hop it names is on loopback).
//
// A POST must not be something a browser sends for another site (a
// form, or a no-cors fetch, riding on the admin's cookie or cached Basic
// credentials): it is refused with a form or text Content-Type, with an
// Origin other than the request's own host, and with Sec-Fetch-Site
// cross-site or same-site. curl and scripts send none of those.
func (rg *Registry) serveSync(w http.ResponseWriter, r *http.Request) {
	w, _, finish := authscope.GuardUnreadBody(w, r)
	defer finish()
	var action string
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		action = authscope.ActionRead
	case http.MethodPost:
		action = authscope.ActionUpdate
	default:
		w.Header().Set("Allow", "GET, HEAD, POST")
		syncError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "use GET for the status, POST to start a run")
		return
	}
	if !rg.syncCallerAllowed(w, r, action) {
		return
	}
	if r.Method == http.MethodPost {
		if reason := crossSite(r); reason != "" {
			rg.logger.Warn("sync trigger refused", zap.String("reason", reason), zap.String("remote", r.RemoteAddr))
			syncError(w, http.StatusForbidden, "DENIED", "refused: "+reason)
			return
		}
		name := r.URL.Query().Get("name")
		var started []string
		for _, s := range rg.syncs.list() {
			if name == "" || s.Name() == name {
				s.Trigger()
				started = append(started, s.Name())
			}
		}
		if len(started) == 0 {
			syncError(w, http.StatusNotFound, "NOT_FOUND", "no sync by that name is running")
			return
		}
		rg.logger.Info("sync run asked for", zap.Strings("syncs", started), zap.String("remote", r.RemoteAddr))
		writeSyncJSON(w, r, http.StatusAccepted, map[string][]string{"triggered": started})
		return
	}
	st := syncStatus{Syncs: []mirrorsync.Status{}}
	for _, s := range rg.syncs.list() {
		st.Syncs = append(st.Syncs, s.Status())
	}
	writeSyncJSON(w, r, http.StatusOK, st)
}

// syncCallerAllowed decides who may use /_oci/sync; on false it has
// answered.
func (rg *Registry) syncCallerAllowed(w http.ResponseWriter, r *http.Request, action string) bool {
	if rg.auth == nil {
		if loopbackClient(r) {
			return true
		}
		syncError(w, http.StatusForbidden, "DENIED", "without auth, /_oci/sync answers loopback clients only")
		return false
	}
	_, err := rg.auth.authorizer.Authorize(r, authscope.Need{Scopes: []authscope.Scope{authscope.AdminScope(action)}})
	if err == nil {
		return true
	}
	var d *authscope.Denial
	if !errors.As(err, &d) {
		rg.logger.Error("checking credentials failed", zap.Error(err))
		syncError(w, http.StatusServiceUnavailable, "UNAVAILABLE", "credentials could not be checked")
		return false
	}
	if d.Challenge != "" {
		w.Header().Set("WWW-Authenticate", d.Challenge)
	}
	if d.RetryAfter > 0 {
		w.Header().Set("Retry-After", authscope.RetryAfter(d.RetryAfter))
	}
	syncError(w, d.Status, d.Code, d.Message)
	return false
}

// crossSite returns why a POST looks like a browser's cross-site
// request, or "".
func crossSite(r *http.Request) string {
	switch strings.ToLower(r.Header.Get("Sec-Fetch-Site")) {
	case "cross-site", "same-site":
		return "cross-site request"
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || !strings.EqualFold(u.Host, r.Host) {
			return "request from another origin"
		}
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt == "application/x-www-form-urlencoded" || mt == "multipart/form-data" || mt == "text/plain" {
			return "form or text body; send no body or application/json"
		}
	}
	return ""
}

// loopbackClient reports whether r comes from loopback, through
// whatever proxies it passed. A proxy on the same host (Caddy's own
// reverse_proxy adding TLS in front of the registry, the usual setup)
// makes every client arrive from loopback; it names the client it
// passes on in X-Forwarded-For, Forwarded or X-Real-IP. Each address
// those name must be on loopback too; one that is not, or that does not
// parse (Forwarded's obfuscated names, "unknown"), makes the client
// remote. A client's own such headers can only make it remote: a proxy
// adds the address it saw.
func loopbackClient(r *http.Request) bool {
	if !loopback(r.RemoteAddr) {
		return false
	}
	for _, v := range r.Header.Values("X-Forwarded-For") {
		for _, hop := range strings.Split(v, ",") {
			if !loopback(strings.TrimSpace(hop)) {
				return false
			}
		}
	}
	for _, v := range r.Header.Values("X-Real-Ip") {
		if !loopback(strings.TrimSpace(v)) {
			return false
		}
	}
	for _, v := range r.Header.Values("Forwarded") {
		for _, elem := range strings.Split(v, ",") {
			for _, pair := range strings.Split(elem, ";") {
				k, val, _ := strings.Cut(strings.TrimSpace(pair), "=")
				if strings.EqualFold(k, "for") && !loopback(strings.Trim(val, `"`)) {
					return false
				}
			}
		}
	}
	return true
}

// loopback reports whether an address, with or without a port (IPv6 in
// brackets when it has one), is a loopback IP.
func loopback(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = strings.TrimSuffix(strings.TrimPrefix(remote, "["), "]")
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func syncError(w http.ResponseWriter, status int, code, msg string) {
	writeSyncJSON(w, nil, status, map[string]any{"errors": []map[string]string{{"code": code, "message": msg}}})
}

func writeSyncJSON(w http.ResponseWriter, r *http.Request, status int, v any) {
	body, _ := json.Marshal(v)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	if r == nil || r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}
