package authscope

// The key API under AuthPath+"apikeys", for a signed-in browser or a
// script holding its session cookie and CSRF token:
//
//	GET    apikeys             the caller's keys (never the secrets)
//	POST   apikeys             {"label": "...", "ttl_days": 30} -> the new key, shown once
//	DELETE apikeys/<id>        revoke
//
// The page's forms post to the same paths (form-encoded; revoke as POST
// apikeys/<id>/revoke) and get the page back.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
)

// apiKeyView is a key as the API shows it.
type apiKeyView struct {
	ID       string     `json:"id"`
	Label    string     `json:"label"`
	User     string     `json:"user"`
	Groups   []string   `json:"groups"`
	Created  time.Time  `json:"created"`
	Expires  time.Time  `json:"expires"`
	LastUsed *time.Time `json:"last_used"`
	Expired  bool       `json:"expired"`
	// GroupsUntil is when Groups stop counting unless the owner signs in
	// again; GroupsStale says they already have: the key then has only
	// its owner's name-based rights.
	// Both are left out when a key's groups come from the directory.
	GroupsUntil *time.Time `json:"groups_until,omitempty"`
	GroupsStale bool       `json:"groups_stale"`
	// GroupsFrom is "sign_in", or "directory": then Groups are those of
	// the last sign-in, and not used.
	GroupsFrom string `json:"groups_from"`
}

func (k *APIKeys) viewOf(rec APIKey, now time.Time) apiKeyView {
	v := apiKeyView{ID: rec.ID, Label: rec.Label, User: rec.User, Groups: nonNil(rec.Groups),
		Created: rec.Created, Expires: rec.Expires, Expired: !now.Before(rec.Expires), GroupsFrom: "directory"}
	if !k.GroupsFromDirectory {
		until := k.GroupsStaleAt(rec)
		v.GroupsUntil, v.GroupsStale, v.GroupsFrom = &until, len(rec.Groups) > 0 && !now.Before(until), "sign_in"
	}
	if !rec.LastUsed.IsZero() {
		lu := rec.LastUsed
		v.LastUsed = &lu
	}
	return v
}

// createRequest is the body of a create.
type createRequest struct {
	Label   string `json:"label"`
	TTLDays int    `json:"ttl_days"`
}

func (s *SignIn) apiKeys(w http.ResponseWriter, r *http.Request, sub string) {
	if s.o.APIKeys == nil {
		http.NotFound(w, r)
		return
	}
	isForm := strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded")
	switch {
	case sub == "" && r.Method == http.MethodGet:
		sess, ok := s.session(w, r, false)
		if !ok {
			return
		}
		keys, err := s.o.APIKeys.List(sess.User)
		if err != nil {
			s.fail(w, r, http.StatusInternalServerError, "cannot list keys", err)
			return
		}
		now := s.now()
		views := make([]apiKeyView, 0, len(keys))
		for _, k := range keys {
			views = append(views, s.o.APIKeys.viewOf(k, now))
		}
		writeJSON(w, http.StatusOK, map[string]any{"keys": views})
	case sub == "" && r.Method == http.MethodPost:
		sess, ok := s.session(w, r, true)
		if !ok {
			return
		}
		var req createRequest
		if isForm {
			req.Label = r.PostFormValue("label")
			if d := r.PostFormValue("ttl_days"); d != "" {
				n, err := strconv.Atoi(d)
				if err != nil {
					s.page(w, r, "", "lifetime: not a number of days")
					return
				}
				req.TTLDays = n
			}
		} else if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&req); err != nil {
			s.fail(w, r, http.StatusBadRequest, "body: want {\"label\": ..., \"ttl_days\": ...}", err)
			return
		}
		if req.TTLDays < 0 || req.TTLDays > 100*365 {
			s.refuseCreate(w, r, isForm, fmt.Errorf("%w: ttl_days %d out of range", ErrAPIKeyRequest, req.TTLDays))
			return
		}
		key, rec, err := s.o.APIKeys.CreateFromSignIn(sess.User, sess.Groups, s.signedIn(sess), req.Label, time.Duration(req.TTLDays)*24*time.Hour)
		if err != nil {
			s.refuseCreate(w, r, isForm, err)
			return
		}
		s.o.Logger.Info("API key created", zap.String("user", sess.User), zap.String("key", rec.ID), zap.Time("expires", rec.Expires))
		if isForm {
			s.page(w, r, key, "")
			return
		}
		v := s.o.APIKeys.viewOf(rec, s.now())
		writeJSON(w, http.StatusCreated, struct {
			apiKeyView
			Key string `json:"key"`
		}{v, key})
	case sub != "" && (r.Method == http.MethodDelete || (r.Method == http.MethodPost && strings.HasSuffix(sub, "/revoke"))):
		sess, ok := s.session(w, r, true)
		if !ok {
			return
		}
		id := strings.TrimSuffix(sub, "/revoke")
		if err := s.o.APIKeys.Revoke(sess.User, id); err != nil {
			status := http.StatusInternalServerError
			if errors.Is(err, ErrAPIKeyNotFound) {
				status = http.StatusNotFound
			}
			s.fail(w, r, status, "cannot revoke key", err)
			return
		}
		s.o.Logger.Info("API key revoked", zap.String("user", sess.User), zap.String("key", id))
		if r.Method == http.MethodPost {
			http.Redirect(w, r, AuthPath, http.StatusSeeOther)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	default:
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

// refuseCreate answers a create the user got wrong.
func (s *SignIn) refuseCreate(w http.ResponseWriter, r *http.Request, isForm bool, err error) {
	if !errors.Is(err, ErrAPIKeyRequest) {
		s.fail(w, r, http.StatusInternalServerError, "cannot create key", err)
		return
	}
	if isForm {
		s.page(w, r, "", err.Error())
		return
	}
	s.fail(w, r, http.StatusBadRequest, err.Error(), err)
}
