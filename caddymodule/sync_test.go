package caddymodule

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/google/go-containerregistry/pkg/name"
	ggcr "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"golang.org/x/crypto/bcrypt"

	"github.com/caddy-oci/caddy-oci/registry/mirrorsync"
	"github.com/caddy-oci/caddy-oci/registry/sigpolicy/sigtest"
)

func TestSyncCaddyfile(t *testing.T) {
	var rg Registry
	err := rg.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`oci_registry {
		mirror docker.io {
			credentials_file /etc/caddy/docker.json
			max_retries 5
			retry_delay 2s
			sync {
				every 6h
				concurrency 2
				content library/alpine {
					tags ^3\.[0-9]+$
					semver >=3.18 <4
					platforms linux/amd64 linux/arm64
					latest 5
				}
				content library/** {
					tags ^stable$
				}
			}
		}
		sync_into hub from https://registry.example {
			username bot
			password {env.PW}
			max_retries 0
			every 1h
			content team/* {
				latest 2
			}
		}
	}`))
	if err != nil {
		t.Fatal(err)
	}
	m := rg.Mirrors[0]
	zero, five := 0, 5
	wantSync := &Sync{Every: caddy.Duration(6 * time.Hour), Concurrency: 2, Content: []SyncContent{
		{Repository: "library/alpine", Tags: `^3\.[0-9]+$`, Semver: ">=3.18 <4", Platforms: []string{"linux/amd64", "linux/arm64"}, Latest: 5},
		{Repository: "library/**", Tags: "^stable$"},
	}}
	if m.CredentialsFile != "/etc/caddy/docker.json" || *m.MaxRetries != five || m.RetryDelay != caddy.Duration(2*time.Second) {
		t.Errorf("mirror parsed as %+v", m)
	}
	if g, w := mustJSONString(t, m.Sync), mustJSONString(t, wantSync); g != w {
		t.Errorf("sync\n got %s\nwant %s", g, w)
	}
	wantInto := &SyncInto{Prefix: "hub", From: "https://registry.example", Username: "bot", Password: "{env.PW}", MaxRetries: &zero,
		Sync: Sync{Every: caddy.Duration(time.Hour), Content: []SyncContent{{Repository: "team/*", Latest: 2}}}}
	if g, w := mustJSONString(t, rg.SyncInto), mustJSONString(t, []*SyncInto{wantInto}); g != w {
		t.Errorf("sync_into\n got %s\nwant %s", g, w)
	}
	// The JSON names are the documented ones.
	js := mustJSONString(t, rg)
	for _, key := range []string{`"sync_into":`, `"from":`, `"credentials_file":`, `"max_retries":5`, `"retry_delay":2000000000`,
		`"every":`, `"concurrency":2`, `"content":`, `"repository":`, `"semver":`, `"platforms":`, `"latest":5`, `"tags":`} {
		if !strings.Contains(js, key) {
			t.Errorf("JSON lacks %s: %s", key, js)
		}
	}

	for _, tc := range []struct{ input, want string }{
		{"mirror d.io {\nsync\n}", "sync needs at least one content"},
		{"mirror d.io {\nsync x {\ncontent a\n}\n}", "sync takes a block"},
		{"mirror d.io {\nsync {\nevery soon\ncontent a\n}\n}", "every must be a positive duration"},
		{"mirror d.io {\nsync {\nevery 1s\ncontent a\n}\n}", "every must be at least 1m"},
		{"mirror d.io {\nsync {\nconcurrency 200000000\ncontent a\n}\n}", "concurrency must be at most 64"},
		{"sync_into hub from https://x {\nevery 59s\ncontent a\n}", "every must be at least 1m"},
		{"mirror d.io {\nsync {\nconcurrency 0\ncontent a\n}\n}", "concurrency must be a positive number"},
		{"mirror d.io {\nsync {\ncontent a {\nlatest -1\n}\n}\n}", "latest must be a positive number"},
		{"mirror d.io {\nsync {\ncontent a {\nplatform linux/amd64\n}\n}\n}", `unrecognized subdirective "platform"`},
		{"mirror d.io {\nsync {\ncontent\n}\n}", "content needs one repository"},
		{"mirror d.io {\nsync {\nnope\n}\n}", `sync: unrecognized subdirective "nope"`},
		{"mirror d.io {\nmax_retries -1\n}", "max_retries must be a number from 0 to 100"},
		{"mirror d.io {\nretry_delay 0s\n}", "retry_delay must be a positive duration"},
		{"mirror d.io {\ncredentials_file\n}", "credentials_file needs exactly one argument"},
		{"sync_into hub {\ncontent a\n}", "sync_into <local prefix> from <upstream URL>"},
		{"sync_into hub to https://x {\ncontent a\n}", "sync_into <local prefix> from <upstream URL>"},
		{"sync_into hub from https://x {\n}", "sync_into hub: needs at least one content"},
		{"sync_into hub from https://x {\nalias y\ncontent a\n}", `sync_into hub: unrecognized subdirective "alias"`},
	} {
		var rg Registry
		err := rg.UnmarshalCaddyfile(caddyfile.NewTestDispenser("oci_registry {\n" + tc.input + "\n}"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error with %q", tc.input, err, tc.want)
		}
	}
}

func mustJSONString(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestCredentialsFile reads Docker config.json entries; errors name the
// directive and never carry a secret.
func TestCredentialsFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	good := write("good.json", `{"auths":{
		"https://index.docker.io/v1/":{"auth":"`+b64("hubuser:hub-s3cret")+`"},
		"ghcr.io":{"username":"gh","password":"gh-s3cret"},
		"registry.example:5000":{"auth":"`+b64("ex:ex-s3cret")+`"},
		"bad.example":{"auth":"%%%s3cret"},
		"nocolon.example":{"auth":"`+b64("s3cretnocolon")+`"}
	}}`)
	repl := caddy.NewReplacer()
	for _, tc := range []struct {
		file           string
		hosts          []string
		user, pass     string
		wantErr        string
		usernameConfig string
	}{
		{file: good, hosts: []string{"registry-1.docker.io", "docker.io", "index.docker.io"}, user: "hubuser", pass: "hub-s3cret"},
		{file: good, hosts: []string{"GHCR.io"}, user: "gh", pass: "gh-s3cret"},
		{file: good, hosts: []string{"registry.example:5000"}, user: "ex", pass: "ex-s3cret"},
		{file: good, hosts: []string{"quay.io"}, wantErr: "mirror x: credentials_file " + good + ": no entry for quay.io"},
		{file: good, hosts: []string{"bad.example"}, wantErr: "is not base64"},
		{file: good, hosts: []string{"nocolon.example"}, wantErr: "is not user:password"},
		{file: write("notjson.json", `{"auths": s3cret`), hosts: []string{"x"}, wantErr: "not a Docker config.json"},
		{file: filepath.Join(dir, "missing.json"), hosts: []string{"x"}, wantErr: "mirror x: credentials_file"},
		{file: good, hosts: []string{"ghcr.io"}, usernameConfig: "bob", wantErr: "credentials_file and username/password both set"},
	} {
		user, pass, err := credentials("mirror x", tc.usernameConfig, "", tc.file, tc.hosts, repl)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%v: %v, want an error with %q", tc.hosts, err, tc.wantErr)
			} else if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("%v: the error repeats a secret: %v", tc.hosts, err)
			}
			continue
		}
		if err != nil || user != tc.user || pass != tc.pass {
			t.Errorf("%v: %q %q %v", tc.hosts, user, pass, err)
		}
	}
}

// countingUpstream is go-containerregistry's registry with every request
// recorded.
type countingUpstream struct {
	srv  *httptest.Server
	mu   sync.Mutex
	reqs []string
	user string
	pass string
}

func newCountingUpstream(t *testing.T) *countingUpstream {
	u := &countingUpstream{}
	reg := ggcr.New(ggcr.Logger(log.New(io.Discard, "", 0)))
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.reqs = append(u.reqs, r.Method+" "+r.URL.Path)
		user, pass := u.user, u.pass
		u.mu.Unlock()
		if user != "" && r.Method != http.MethodPut && r.Method != http.MethodPost && r.Method != http.MethodPatch {
			if gu, gp, ok := r.BasicAuth(); !ok || gu != user || gp != pass {
				w.Header().Set("WWW-Authenticate", `Basic realm="up"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"who?"}]}`, http.StatusUnauthorized)
				return
			}
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *countingUpstream) fetches() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []string
	for _, r := range u.reqs {
		if strings.HasPrefix(r, "GET ") && (strings.Contains(r, "/manifests/") || strings.Contains(r, "/blobs/")) {
			out = append(out, r)
		}
	}
	return out
}

func (u *countingUpstream) reset() {
	u.mu.Lock()
	u.reqs = nil
	u.mu.Unlock()
}

// TestSyncInCaddy: Caddy runs a mirror with a sync (upstream credentials
// from a config.json) and a sync_into; /_oci/sync shows their state to
// admins only, an admin's POST runs them now (a browser's cross-site
// POST is refused), the run is counted in metrics, and pulls of the
// synced tags afterwards fetch nothing upstream.
func TestSyncInCaddy(t *testing.T) {
	up := newCountingUpstream(t)
	host := strings.TrimPrefix(up.srv.URL, "http://")
	for _, tag := range []string{"1.0.0", "1.1.0", "2.0.0", "nightly"} {
		img, err := random.Image(512, 2)
		if err != nil {
			t.Fatal(err)
		}
		ref, _ := name.ParseReference(host+"/team/app:"+tag, name.Insecure)
		if err := remote.Write(ref, img); err != nil {
			t.Fatal(err)
		}
	}
	up.mu.Lock()
	up.user, up.pass = "bot", "bot-pw"
	up.mu.Unlock()

	dir := t.TempDir()
	creds := filepath.Join(dir, "docker.json")
	auth := base64.StdEncoding.EncodeToString([]byte("bot:bot-pw"))
	if err := os.WriteFile(creds, []byte(`{"auths":{"`+host+`":{"auth":"`+auth+`"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	htp := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(htp, []byte("root:"+string(hash)+"\nci:"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	cfg := adaptFront(t, `{
	admin off
	auto_https off
}
http://`+addr+` {
	oci_registry {
		storage `+filepath.Join(dir, "data")+`
		mirror up.test {
			upstream `+up.srv.URL+`
			credentials_file `+creds+`
			sync {
				content team/app {
					semver >=1
					latest 2
				}
			}
		}
		sync_into copies from `+up.srv.URL+` {
			credentials_file `+creds+`
			content team/app {
				tags ^nightly$
			}
		}
		auth {
			htpasswd `+htp+`
			fail_delay 1ms
			admin users root
			access ** {
				anonymous read
			}
		}
	}
}`)
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopCaddy(t) })
	base := "http://" + addr + SyncPath

	do := func(method, user string, hdr ...string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest(method, base, nil)
		if user != "" {
			req.SetBasicAuth(user, "pw")
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	if resp, body := do("GET", ""); resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") == "" {
		t.Errorf("anonymous GET: %d %s", resp.StatusCode, body)
	}
	if resp, body := do("GET", "ci"); resp.StatusCode != 403 {
		t.Errorf("non-admin GET: %d %s", resp.StatusCode, body)
	}
	if resp, body := do("POST", "ci"); resp.StatusCode != 403 {
		t.Errorf("non-admin POST: %d %s", resp.StatusCode, body)
	}
	for _, hdr := range [][]string{
		{"Content-Type", "application/x-www-form-urlencoded"},
		{"Content-Type", "text/plain"},
		{"Origin", "https://evil.example"},
		{"Sec-Fetch-Site", "cross-site"},
	} {
		if resp, body := do("POST", "root", hdr...); resp.StatusCode != 403 {
			t.Errorf("admin POST with %v: %d %s", hdr, resp.StatusCode, body)
		}
	}
	if resp, body := do("DELETE", "root"); resp.StatusCode != 405 {
		t.Errorf("DELETE: %d %s", resp.StatusCode, body)
	}
	// Other spellings of the path are the handler's too, and not ours.
	for _, p := range []string{"/_OCI/sync", "/_oci/sync/", "/_oci/other"} {
		resp, err := http.Get("http://" + addr + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 404 {
			t.Errorf("GET %s: %d, want 404", p, resp.StatusCode)
		}
	}
	resp, body := do("GET", "root")
	var st struct{ Syncs []mirrorsync.Status }
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &st) != nil || len(st.Syncs) != 2 || st.Syncs[0].LastRun != nil {
		t.Fatalf("admin GET before a run: %d %s", resp.StatusCode, body)
	}
	// The refused POSTs started nothing.
	if resp, body := do("POST", "root", "Origin", "http://"+addr); resp.StatusCode != 202 || !strings.Contains(body, `"up.test"`) || !strings.Contains(body, `"copies"`) {
		t.Fatalf("admin POST: %d %s", resp.StatusCode, body)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, body = do("GET", "root")
		st.Syncs = nil
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatal(err)
		}
		if len(st.Syncs) == 2 && st.Syncs[0].LastEnd != nil && st.Syncs[1].LastEnd != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no run finished: %s", body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, s := range st.Syncs {
		want := map[string]int{"up.test": 2, "copies": 1}[s.Name]
		if s.LastRun.ErrorCount != 0 || s.LastRun.Tags != want || s.NextRun == nil || s.Running {
			t.Errorf("%s after a run: %s", s.Name, body)
		}
	}
	if v := testutil.ToFloat64(collectors.syncRuns.WithLabelValues("up.test", "ok")); v < 1 {
		t.Errorf("caddy_oci_sync_runs_total{sync=up.test,result=ok} = %v", v)
	}
	if v := testutil.ToFloat64(collectors.syncFetched.WithLabelValues("copies", "manifest")); v < 1 {
		t.Errorf("caddy_oci_sync_fetched_total{sync=copies,kind=manifest} = %v", v)
	}

	// Pulls of what was synced: nothing from upstream.
	up.reset()
	for _, r := range []string{"up.test/team/app:2.0.0", "up.test/team/app:1.1.0", "copies/team/app:nightly"} {
		ref, _ := name.ParseReference(addr+"/"+r, name.Insecure)
		img, err := remote.Image(ref)
		if err != nil {
			t.Fatalf("pull %s: %v", r, err)
		}
		ls, _ := img.Layers()
		for _, l := range ls {
			rc, err := l.Compressed()
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, rc)
			rc.Close()
		}
	}
	if f := up.fetches(); len(f) != 0 {
		t.Errorf("pulls after sync fetched upstream: %q", f)
	}
}

// TestSyncIntoRefusesMirrorPrefix: a copy may not land in a mirror's
// namespace.
func TestSyncIntoRefusesMirrorPrefix(t *testing.T) {
	addr := freeAddr(t)
	cfg := strings.Replace(string(config(t, addr, t.TempDir(), 0)), `"handler":"oci_registry"`,
		`"handler":"oci_registry","mirrors":[{"prefix":"docker.io","default":true}],"sync_into":[{"prefix":"docker.io/x","from":"https://r.example","content":[{"repository":"a"}]}]`, 1)
	err := caddy.Load([]byte(cfg), true)
	if err == nil {
		stopCaddy(t)
		t.Fatal("a sync_into inside a mirror's namespace was accepted")
	}
	if !strings.Contains(err.Error(), "sync_into docker.io/x") {
		t.Errorf("error does not name the directive: %v", err)
	}
	cfg = strings.Replace(cfg, `"docker.io/x"`, `"hub"`, 1)
	if err := caddy.Load([]byte(cfg), true); err == nil || !strings.Contains(err.Error(), "list it under local") {
		stopCaddy(t)
		t.Errorf("a sync_into under a default mirror without local: %v", err)
	}
}

// TestSyncWithoutAuthLoopbackOnly: with no auth nobody is an admin, so
// /_oci/sync answers loopback clients only. A request a proxy passed on
// (X-Forwarded-For, Forwarded, X-Real-IP) comes from loopback when the
// proxy runs on the same host, which is how a registry is usually put
// behind TLS: it is a loopback client only if every hop it names is.
func TestSyncWithoutAuthLoopbackOnly(t *testing.T) {
	rg := &Registry{syncs: new(syncRunner), logger: zap.NewNop()}
	for _, tc := range []struct {
		remote string
		hdr    []string
		want   int
	}{
		{"192.0.2.1:1234", nil, http.StatusForbidden},
		{"[2001:db8::1]:1234", nil, http.StatusForbidden},
		{"127.0.0.1:1234", nil, http.StatusOK},
		{"[::1]:1234", nil, http.StatusOK},
		// A proxy on the same host passing on a remote client.
		{"127.0.0.1:1234", []string{"X-Forwarded-For", "192.0.2.7"}, http.StatusForbidden},
		{"127.0.0.1:1234", []string{"X-Forwarded-For", "127.0.0.1, 192.0.2.7"}, http.StatusForbidden},
		{"127.0.0.1:1234", []string{"X-Forwarded-For", "192.0.2.7, 127.0.0.1"}, http.StatusForbidden},
		{"127.0.0.1:1234", []string{"X-Forwarded-For", "2001:db8::7"}, http.StatusForbidden},
		{"127.0.0.1:1234", []string{"X-Forwarded-For", "unknown"}, http.StatusForbidden},
		{"127.0.0.1:1234", []string{"X-Forwarded-For", ""}, http.StatusForbidden},
		{"127.0.0.1:1234", []string{"Forwarded", "for=192.0.2.7;proto=https"}, http.StatusForbidden},
		{"127.0.0.1:1234", []string{"Forwarded", `for="[2001:db8::7]:443"`}, http.StatusForbidden},
		{"127.0.0.1:1234", []string{"Forwarded", "for=127.0.0.1, for=_hidden"}, http.StatusForbidden},
		{"127.0.0.1:1234", []string{"X-Real-Ip", "192.0.2.7"}, http.StatusForbidden},
		{"127.0.0.1:1234", []string{"X-Forwarded-For", "127.0.0.1", "X-Real-Ip", "192.0.2.7"}, http.StatusForbidden},
		// Loopback all the way: an operator's curl through the local proxy.
		{"127.0.0.1:1234", []string{"X-Forwarded-For", "127.0.0.1"}, http.StatusOK},
		{"127.0.0.1:1234", []string{"X-Forwarded-For", "::1, 127.0.0.1"}, http.StatusOK},
		{"127.0.0.1:1234", []string{"Forwarded", `for=127.0.0.1;proto=http, for="[::1]:5000"`}, http.StatusOK},
		{"127.0.0.1:1234", []string{"X-Real-Ip", "127.0.0.1"}, http.StatusOK},
		// Headers do not make a remote client local.
		{"192.0.2.1:1234", []string{"X-Forwarded-For", "127.0.0.1"}, http.StatusForbidden},
	} {
		r := httptest.NewRequest(http.MethodGet, SyncPath, nil)
		r.RemoteAddr = tc.remote
		for i := 0; i+1 < len(tc.hdr); i += 2 {
			r.Header.Add(tc.hdr[i], tc.hdr[i+1])
		}
		w := httptest.NewRecorder()
		rg.serveSync(w, r)
		if w.Code != tc.want {
			t.Errorf("GET from %s %q: %d %s, want %d", tc.remote, tc.hdr, w.Code, w.Body, tc.want)
		}
	}
}

// TestSyncBehindLocalProxy: the registry behind Caddy's own
// reverse_proxy on the same host (the usual way to add TLS) sees every
// client arrive from loopback; without auth, /_oci/sync must still
// answer only clients that are themselves on loopback. The proxy's
// header_up stands in for a remote client, which a test on loopback
// cannot be: it is what the registry receives for one.
func TestSyncBehindLocalProxy(t *testing.T) {
	dir := t.TempDir()
	regAddr, localProxy, remoteProxy := freeAddr(t), freeAddr(t), freeAddr(t)
	cfg := adaptFront(t, `{
	admin off
	auto_https off
}
http://`+regAddr+` {
	oci_registry {
		storage `+filepath.Join(dir, "data")+`
		mirror up.test {
			upstream http://127.0.0.1:1
			sync {
				every 6h
				content team/app
			}
		}
	}
}
http://`+localProxy+` {
	reverse_proxy `+regAddr+`
}
http://`+remoteProxy+` {
	reverse_proxy `+regAddr+` {
		header_up X-Forwarded-For 192.0.2.7
	}
}`)
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopCaddy(t) })
	for _, tc := range []struct {
		addr, method string
		want         int
	}{
		{regAddr, http.MethodGet, http.StatusOK},
		{localProxy, http.MethodGet, http.StatusOK},
		{remoteProxy, http.MethodGet, http.StatusForbidden},
		{remoteProxy, http.MethodPost, http.StatusForbidden},
	} {
		req, _ := http.NewRequest(tc.method, "http://"+tc.addr+SyncPath, nil)
		// A client's own X-Forwarded-For is replaced by Caddy's proxy
		// (the client is not a trusted proxy).
		req.Header.Set("X-Forwarded-For", "127.0.0.1")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s %s: %d %s, want %d", tc.method, tc.addr, resp.StatusCode, body, tc.want)
		}
	}
}

// TestMirrorRetriesJSON: max_retries and retry_delay reach the mirror;
// negative values are refused naming the directive.
func TestMirrorRetriesJSON(t *testing.T) {
	for _, tc := range []struct {
		p    *int
		want int
	}{{nil, 0}, {new(0), -1}, {new(4), 4}} {
		if got := maxRetries(tc.p); got != tc.want {
			t.Errorf("maxRetries(%v) = %d, want %d", tc.p, got, tc.want)
		}
	}
	for _, tc := range []struct{ json, want string }{
		{`{"prefix":"d.io","max_retries":-1}`, "mirror d.io: max_retries must not be negative"},
		{`{"prefix":"d.io","retry_delay":-1}`, "mirror d.io: retry_delay must not be negative"},
		{`{"prefix":"d.io","sync":{"content":[{"repository":"a","semver":"soon"}]}}`, "mirror d.io: sync: content a: semver"},
		{`{"prefix":"d.io","sync":{"content":[]}}`, "mirror d.io: sync: no content"},
		// A sync every nanosecond runs back to back: ~900 upstream
		// requests a second for one tag.
		{`{"prefix":"d.io","sync":{"every":1,"content":[{"repository":"a"}]}}`, "mirror d.io: sync: every must be at least 1m"},
		// A goroutine per fetch slot, started by every run: 200 million
		// of them grew the process by 80 MB a second until it died.
		{`{"prefix":"d.io","sync":{"concurrency":200000000,"content":[{"repository":"a"}]}}`, "mirror d.io: sync: concurrency must be at most 64"},
		// A sync keeps to the mirror's repositories: a name outside them
		// would fail every run.
		{`{"prefix":"d.io","repositories":["team/**"],"sync":{"content":[{"repository":"other/app"}]}}`,
			"mirror d.io: sync: content other/app is not among the mirror's repositories"},
		{`{"prefix":"docker.io","repositories":["team/**"],"sync":{"content":[{"repository":"alpine"}]}}`,
			"mirror docker.io: sync: content alpine is not among the mirror's repositories"},
	} {
		var m Mirror
		if err := json.Unmarshal([]byte(tc.json), &m); err != nil {
			t.Fatal(err)
		}
		_, err := buildMirrors([]*Mirror{&m}, nil, 0, caddy.NewReplacer(), zap.NewNop())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.json, err, tc.want)
		}
	}
}

// TestSyncSkipsUnsignedInCaddy: under require_signature, a sync skips
// what the policy refuses, and says so in /_oci/sync and in metrics.
func TestSyncSkipsUnsignedInCaddy(t *testing.T) {
	up := newCountingUpstream(t)
	host := strings.TrimPrefix(up.srv.URL, "http://")
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(host+"/team/app:1.0.0", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	key, err := sigtest.NewCosignKey()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "cosign.pub")
	if err := os.WriteFile(keyFile, key.PublicPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	cfg := adaptFront(t, `{
	admin off
	auto_https off
}
http://`+addr+` {
	oci_registry {
		storage `+filepath.Join(dir, "data")+`
		mirror signed.test {
			upstream `+up.srv.URL+`
			sync {
				content team/app
			}
		}
		require_signature signed.test/** {
			cosign_key `+keyFile+`
		}
	}
}`)
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopCaddy(t) })
	base := "http://" + addr + SyncPath
	resp, err := http.Post(base, "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST %s: %d", base, resp.StatusCode)
	}
	var st struct{ Syncs []mirrorsync.Status }
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(base)
		if err != nil {
			t.Fatal(err)
		}
		st.Syncs = nil
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Syncs) == 1 && st.Syncs[0].LastRun != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no run finished: %+v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if r := st.Syncs[0].LastRun; r.SkippedUnsigned != 1 || r.ErrorCount != 0 || r.BlobsFetched != 0 {
		t.Errorf("run under the policy: %+v", r)
	}
	if v := testutil.ToFloat64(collectors.syncSkipped.WithLabelValues("signed.test")); v != 1 {
		t.Errorf("caddy_oci_sync_skipped_unsigned_total{sync=signed.test} = %v", v)
	}
}
