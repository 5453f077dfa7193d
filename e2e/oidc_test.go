package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/caddy-oci/caddy-oci/authscope/oidctest"
)

// oidcServer starts caddy with sign-in at an in-test OIDC provider and
// the README's example policy, where the groups come from the provider:
// anonymous read everywhere; artifact-workloads read+create on
// blumeops/**; admins everything.
func oidcServer(t *testing.T, p *oidctest.Provider) *server {
	t.Helper()
	return oidcSite(t, p, "")
}

// oidcSite is oidcServer with more directives after oci_registry in the
// site (another handler of the same host).
func oidcSite(t *testing.T, p *oidctest.Provider, more string) *server {
	t.Helper()
	needBinary(t)
	dir := t.TempDir()
	secret := filepath.Join(dir, "client-secret")
	if err := os.WriteFile(secret, []byte(oidctest.ClientSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(dir, "data")
	port, adminPort := strconv.Itoa(freePort(t)), strconv.Itoa(freePort(t))
	addr := "127.0.0.1:" + port
	cfg := fmt.Sprintf(`{
	admin localhost:%s
	auto_https off
}

http://:%s {
	bind 127.0.0.1
	oci_registry {
		storage %s
		auth {
			fail_delay 10ms
			admin groups admins
			access ** {
				anonymous read
			}
			access blumeops/** {
				anonymous read
				group artifact-workloads read create
				group workload:blumeops read create
			}
			oidc {
				issuer %s
				client_id %s
				client_secret_file %s
				external_url http://%s
			}
			api_keys {
				max_ttl 720h
			}
			workload {
				issuer %s
				audience %s
				groups_claim repository_owner
			}
		}
	}
	%s
}
`, adminPort, port, strconv.Quote(dataDir), p.Issuer(), oidctest.ClientID, strconv.Quote(secret), addr,
		p.Issuer(), workloadAudience, more)
	config := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, config: config, addr: addr, admin: "localhost:" + adminPort,
		dataDir: dataDir, readyStatus: http.StatusUnauthorized}
	s.start()
	return s
}

// workloadAudience is the audience CI jobs ask their tokens for.
const workloadAudience = "registry.test"

// webSession is a browser signed in at s.
type webSession struct {
	t    *testing.T
	s    *server
	c    *http.Client
	csrf string
}

func signIn(t *testing.T, s *server) *webSession {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	w := &webSession{t: t, s: s, c: &http.Client{Jar: jar}}
	resp, err := w.c.Get(s.url("/_oci/auth/login"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Request.URL.Path != "/_oci/auth/" {
		t.Fatalf("sign-in ended with %d at %s:\n%s", resp.StatusCode, resp.Request.URL, body)
	}
	var sess struct {
		User   string   `json:"user"`
		Groups []string `json:"groups"`
		CSRF   string   `json:"csrf_token"`
	}
	w.do(http.MethodGet, "/_oci/auth/session", nil, http.StatusOK, &sess)
	w.csrf = sess.CSRF
	return w
}

// do sends a JSON request with the session and CSRF token and decodes the
// answer into out.
func (w *webSession) do(method, path string, body any, want int, out any) {
	w.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, w.s.url(path), rd)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	if method != http.MethodGet {
		// What a browser sends with the page's script.
		req.Header.Set("Origin", "http://"+w.s.addr)
	}
	if w.csrf != "" {
		req.Header.Set("X-CSRF-Token", w.csrf)
	}
	resp, err := w.c.Do(req)
	if err != nil {
		w.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		w.t.Fatalf("%s %s: %d, want %d: %s", method, path, resp.StatusCode, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			w.t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
}

// TestOIDCAPIKeyPush is issue 6's acceptance through the binary: sign in
// at an OIDC provider on loopback as a member of artifact-workloads, make
// an API key, push with it from skopeo, fail to overwrite the tag, pull
// anonymously; once the key is revoked, it is refused.
func TestOIDCAPIKeyPush(t *testing.T) {
	skopeo := tool(t, "skopeo")
	p := oidctest.New(t, "ci-bot", "artifact-workloads")
	s := oidcServer(t, p)
	w := signIn(t, s)

	var created struct {
		ID, Key, User string
		Groups        []string
	}
	w.do(http.MethodPost, "/_oci/auth/apikeys", map[string]any{"label": "blumeops ci", "ttl_days": 30}, http.StatusCreated, &created)
	if created.User != "ci-bot" || len(created.Groups) != 1 || created.Groups[0] != "artifact-workloads" {
		t.Fatalf("key %+v", created)
	}
	w.do(http.MethodPost, "/_oci/auth/apikeys", map[string]any{"ttl_days": 31}, http.StatusBadRequest, nil) // beyond max_ttl

	addr := s.localhostAddr()
	home := t.TempDir()
	env := []string{"REGISTRY_AUTH_FILE=" + filepath.Join(home, "auth.json"), "DOCKER_CONFIG=" + home, "HOME=" + home}
	first, firstDigest := newLayout(t)
	second, _ := newLayout(t)
	creds := "ci-bot:" + created.Key
	push := func(src, ref string) []string {
		return []string{"copy", "--retry-times", "0", "--preserve-digests", "--dest-tls-verify=false",
			"--dest-creds", creds, "oci:" + src, "docker://" + addr + "/" + ref}
	}

	t.Run("push with the key", func(t *testing.T) {
		run(t, env, skopeo, push(first, "blumeops/app:v1")...)
	})
	if t.Failed() {
		return
	}
	t.Run("the key may not move the tag", func(t *testing.T) {
		runFail(t, env, skopeo, push(second, "blumeops/app:v1")...)
	})
	t.Run("anonymous pull", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "pulled")
		run(t, env, skopeo, "copy", "--retry-times", "0", "--src-tls-verify=false",
			"docker://"+addr+"/blumeops/app:v1", "oci:"+dir+":v1")
		if got := layoutDigest(t, dir); got != firstDigest {
			t.Errorf("anonymous pull got %s, want %s", got, firstDigest)
		}
	})
	t.Run("last used", func(t *testing.T) {
		var list struct {
			Keys []struct {
				ID       string  `json:"id"`
				LastUsed *string `json:"last_used"`
			} `json:"keys"`
		}
		w.do(http.MethodGet, "/_oci/auth/apikeys", nil, http.StatusOK, &list)
		if len(list.Keys) != 1 || list.Keys[0].ID != created.ID || list.Keys[0].LastUsed == nil {
			t.Errorf("keys after use: %+v", list.Keys)
		}
	})
	t.Run("revoked key refused", func(t *testing.T) {
		w.do(http.MethodDelete, "/_oci/auth/apikeys/"+created.ID, nil, http.StatusNoContent, nil)
		out := runFail(t, env, skopeo, push(first, "blumeops/app:v2")...)
		if !strings.Contains(strings.ToLower(out), "unauthorized") && !strings.Contains(out, "401") {
			t.Errorf("push with a revoked key failed, but not for auth:\n%s", out)
		}
		runFail(t, env, skopeo, "inspect", "--raw", "--retry-times", "0", "--tls-verify=false", "docker://"+addr+"/blumeops/app:v2")
	})
}

// TestOIDCWorkloadPush: a CI job's OIDC token, used as the password,
// pushes where its repository_owner claim (as the group
// workload:<owner>) may, and nowhere else; a token for another audience
// is refused, and an owner named like a people's group is no member of it.
func TestOIDCWorkloadPush(t *testing.T) {
	skopeo := tool(t, "skopeo")
	p := oidctest.New(t, "unused")
	s := oidcServer(t, p)
	addr := s.localhostAddr()
	home := t.TempDir()
	env := []string{"REGISTRY_AUTH_FILE=" + filepath.Join(home, "auth.json"), "DOCKER_CONFIG=" + home, "HOME=" + home}
	img := ociImage(t)
	src := writeLayout(t, img)
	job := map[string]any{"sub": "repo:blumeops/app:ref:refs/heads/main", "repository_owner": "blumeops"}
	squatter := map[string]any{"sub": "repo:artifact-workloads/app:ref:refs/heads/main", "repository_owner": "artifact-workloads"}
	push := func(token, ref string) []string {
		return []string{"copy", "--retry-times", "0", "--preserve-digests", "--dest-tls-verify=false",
			"--dest-creds", "ci:" + token, "oci:" + src, "docker://" + addr + "/" + ref}
	}
	run(t, env, skopeo, push(p.Token(workloadAudience, job), "blumeops/job:v1")...)
	runFail(t, env, skopeo, push(p.Token(workloadAudience, job), "other/job:v1")...)
	runFail(t, env, skopeo, push(p.Token("someone-else", job), "blumeops/job:v2")...)
	runFail(t, env, skopeo, push(p.Token(workloadAudience, squatter), "blumeops/job:v3")...)
}

// TestOIDCPageScreenshot loads the key page in headless Chromium (Debian's
// chromium), signed in through the provider, and checks that it shows the
// user, their groups and their keys. Like every client, chromium is
// mandatory under CADDY_OCI_E2E=1 (.ci/run installs it). The screenshot
// goes to $OCI_SCREENSHOT_DIR when set (scripts/oidc-page-screenshot.sh).
func TestOIDCPageScreenshot(t *testing.T) {
	chromium := tool(t, "chromium")
	p := oidctest.New(t, "alice", "artifact-workloads", "admins")
	s := oidcServer(t, p)
	w := signIn(t, s)
	var keys []string
	for _, label := range []string{"blumeops ci", "laptop"} {
		var k struct{ ID, Key string }
		w.do(http.MethodPost, "/_oci/auth/apikeys", map[string]any{"label": label}, http.StatusCreated, &k)
		keys = append(keys, k.ID)
		if label == "blumeops ci" {
			// One use, so the page shows a last-used time.
			req, _ := http.NewRequest(http.MethodGet, s.url("/v2/"), nil)
			req.SetBasicAuth("alice", k.Key)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET /v2/ with the key: %d", resp.StatusCode)
			}
		}
	}

	dir := os.Getenv("OCI_SCREENSHOT_DIR")
	if dir == "" {
		dir = t.TempDir()
	}
	png := filepath.Join(dir, "oidc-keys-page.png")
	// Chromium follows the whole sign-in: login -> provider -> callback ->
	// the page. Root needs --no-sandbox.
	browse := func(extra ...string) string {
		args := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
			"--user-data-dir=" + t.TempDir(), "--window-size=1100,760"}, extra...)
		return run(t, nil, chromium, append(args, s.url("/_oci/auth/login"))...)
	}
	dom := browse("--dump-dom")
	for _, want := range append([]string{`id="user">alice<`, `class="group">artifact-workloads<`, "blumeops ci", "laptop"}, keys...) {
		if !strings.Contains(dom, want) {
			t.Errorf("the page in chromium lacks %q:\n%s", want, dom)
		}
	}
	browse("--screenshot=" + png)
	b, err := os.ReadFile(png)
	if err != nil || !bytes.HasPrefix(b, []byte("\x89PNG")) {
		t.Fatalf("screenshot %s: %v", png, err)
	}
	t.Logf("screenshot: %s (%d bytes)", png, len(b))
}
