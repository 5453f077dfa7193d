package authscope

// The page at AuthPath: who you are, your API keys, a form to make one
// and buttons to revoke. Plain HTML forms, no script; html/template
// escapes everything the user or the provider chose.

import (
	"html/template"
	"net/http"
	"time"

	"go.uber.org/zap"
)

var pageTemplate = template.Must(template.New("page").Funcs(template.FuncMap{
	"date": func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04 UTC") },
}).Parse(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Registry sign-in</title>
<style>
body { font: 15px/1.5 system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; width: 100%; margin: 1rem 0; }
th, td { text-align: left; padding: .3rem .6rem; border-bottom: 1px solid #ddd; }
code.key { display: block; padding: .6rem; background: #f3f3c8; word-break: break-all; }
.err { color: #a00; } .muted { color: #777; }
form.inline { display: inline; }
</style>
</head>
<body>
<h1>Registry</h1>
{{if not .User}}
<p>You are not signed in.</p>
<p><a href="login">Sign in</a></p>
{{else}}
<p>Signed in as <strong id="user">{{.User}}</strong>{{if .Groups}}, groups: {{range $i, $g := .Groups}}{{if $i}}, {{end}}<span class="group">{{$g}}</span>{{end}}{{else}}, no groups{{end}}.</p>
<form method="post" action="logout"><input type="hidden" name="csrf" value="{{.CSRF}}"><button>Sign out</button></form>
{{if .Keys}}
{{if .NewKey}}
<h2>Your new API key</h2>
<p>Copy it now: it is not shown again. Use it as the password, e.g. <code>docker login -u {{.User}}</code>.</p>
<code class="key" id="new-key">{{.NewKey}}</code>
{{end}}
{{if .Error}}<p class="err">{{.Error}}</p>{{end}}
<h2>API keys</h2>
{{if .List}}
<table>
<tr><th>Label</th><th>ID</th><th>Groups</th><th>Created</th><th>Expires</th><th>Last used</th><th></th></tr>
{{range .List}}
<tr class="apikey">
<td>{{.Label}}</td><td><code>{{.ID}}</code></td>
<td>{{if eq .GroupsFrom "directory"}}<span class="muted">the directory's, as they are</span>{{else}}{{range $i, $g := .Groups}}{{if $i}}, {{end}}{{$g}}{{end}}{{end}}{{if .GroupsStale}} <span class="err groups-stale">(stale since {{date .GroupsUntil}}: the key has your own rights only; sign in again to renew its groups)</span>{{end}}</td>
<td>{{date .Created}}</td>
<td>{{date .Expires}}{{if .Expired}} <span class="err">(expired)</span>{{end}}</td>
<td>{{if .LastUsed}}{{date .LastUsed}}{{else}}<span class="muted">never</span>{{end}}</td>
<td><form class="inline" method="post" action="apikeys/{{.ID}}/revoke"><input type="hidden" name="csrf" value="{{$.CSRF}}"><button>Revoke</button></form></td>
</tr>
{{end}}
</table>
{{else}}
<p class="muted">No keys yet.</p>
{{end}}
<h2>New API key</h2>
<form method="post" action="apikeys">
<input type="hidden" name="csrf" value="{{.CSRF}}">
<label>Label <input name="label" maxlength="100" placeholder="ci for blumeops"></label>
<label>Days <input name="ttl_days" type="number" min="1" max="{{.MaxDays}}" value="{{.DefaultDays}}"></label>
<button>Create</button>
</form>
{{end}}
{{end}}
</body>
</html>
`))

type pageData struct {
	User, CSRF, NewKey, Error string
	Groups                    []string
	Keys                      bool // key management is on
	List                      []apiKeyView
	DefaultDays, MaxDays      int
}

// page renders the page for the caller (signed in or not), with a key
// just made or an error from the last form.
func (s *SignIn) page(w http.ResponseWriter, r *http.Request, newKey, formErr string) {
	d := pageData{NewKey: newKey, Error: formErr}
	sess, err := s.current(r)
	if err != nil && !signedOut(err) {
		s.fail(w, r, http.StatusInternalServerError, "cannot check the session", err)
		return
	}
	if err == nil {
		d.User, d.Groups, d.CSRF = sess.User, sess.Groups, sess.CSRF
		if k := s.o.APIKeys; k != nil {
			d.Keys = true
			def, maxTTL := k.ttls()
			d.DefaultDays, d.MaxDays = int(def/(24*time.Hour)), int(maxTTL/(24*time.Hour))
			keys, err := k.List(sess.User)
			if err != nil {
				s.fail(w, r, http.StatusInternalServerError, "cannot list keys", err)
				return
			}
			now := s.now()
			for _, key := range keys {
				d.List = append(d.List, k.viewOf(key, now))
			}
		}
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	status := http.StatusOK
	if formErr != "" {
		status = http.StatusBadRequest
	}
	w.WriteHeader(status)
	if err := pageTemplate.Execute(w, d); err != nil {
		s.o.Logger.Warn("rendering the sign-in page", zap.Error(err))
	}
}
