package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// writeHtpasswd writes an htpasswd file of users (name → password) and
// returns its path.
func writeHtpasswd(t testing.TB, users map[string]string) string {
	t.Helper()
	var htp strings.Builder
	for user, pw := range users {
		hash, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&htp, "%s:%s\n", user, hash)
	}
	path := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(path, []byte(htp.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// authServer starts caddy with the README's example policy (anonymous read
// everywhere; group artifact-workloads read+create on blumeops/**; group
// admins everything) and an htpasswd file holding users (name → password).
// With auth on, anonymous callers get 401 with a Basic challenge at /v2/:
// that is what readiness looks like here.
func authServer(t *testing.T, users map[string]string) *server {
	t.Helper()
	dir := t.TempDir()
	htpasswd := writeHtpasswd(t, users)
	dataDir := filepath.Join(dir, "data")
	s := siteServer(t, dataDir, fmt.Sprintf(`	oci_registry {
		storage %s
		auth {
			htpasswd %s
			fail_delay 10ms
			realm blumeops
			group artifact-workloads ci
			group admins admin
			admin groups admins
			access ** {
				anonymous read
			}
			access blumeops/** {
				anonymous read
				group artifact-workloads read create
			}
		}
	}`, strconv.Quote(dataDir), strconv.Quote(htpasswd)), http.StatusUnauthorized)
	resp, err := http.Get(s.url("/v2/"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if ch := resp.Header.Get("WWW-Authenticate"); !strings.HasPrefix(ch, "Basic") {
		t.Fatalf("anonymous GET /v2/ challenge = %q, want Basic", ch)
	}
	return s
}

// runFail runs a client command that must fail, and returns its output.
func runFail(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("%s %s succeeded, want a failure:\n%s", name, strings.Join(args, " "), out)
	}
	return string(out)
}

// TestAuth pushes and pulls with skopeo through the binary under the
// README's example policy: ci (artifact-workloads) may push new tags under
// blumeops/ but not move them nor push elsewhere; anonymous callers may
// only pull; admin (admins) may move the tag.
func TestAuth(t *testing.T) {
	skopeo := tool(t, "skopeo")
	const ciPW, adminPW = "ci-secret", "admin-secret"
	s := authServer(t, map[string]string{"ci": ciPW, "admin": adminPW})
	// skopeo falls back to plain HTTP for localhost with --*-tls-verify=false.
	addr := s.localhostAddr()
	// No stored credentials from the environment: anonymous means anonymous.
	home := t.TempDir()
	env := []string{"REGISTRY_AUTH_FILE=" + filepath.Join(home, "auth.json"), "DOCKER_CONFIG=" + home, "HOME=" + home}

	first, firstDigest := newLayout(t)
	second, secondDigest := newLayout(t)

	push := func(src, ref string, creds ...string) []string {
		args := []string{"copy", "--retry-times", "0", "--preserve-digests", "--dest-tls-verify=false"}
		if len(creds) > 0 {
			args = append(args, "--dest-creds", creds[0])
		}
		return append(args, "oci:"+src, "docker://"+addr+"/"+ref)
	}
	// remoteDigest is the sha256 of the manifest an anonymous caller reads.
	remoteDigest := func(t *testing.T, ref string) string {
		t.Helper()
		raw := run(t, env, skopeo, "inspect", "--raw", "--retry-times", "0", "--tls-verify=false", "docker://"+addr+"/"+ref)
		sum := sha256.Sum256([]byte(raw))
		return "sha256:" + hex.EncodeToString(sum[:])
	}
	ci, admin := "ci:"+ciPW, "admin:"+adminPW

	t.Run("ci pushes a new tag", func(t *testing.T) {
		run(t, env, skopeo, push(first, "blumeops/app:v1", ci)...)
	})
	if t.Failed() {
		return
	}
	t.Run("ci may not move the tag", func(t *testing.T) {
		runFail(t, env, skopeo, push(second, "blumeops/app:v1", ci)...)
		if got := remoteDigest(t, "blumeops/app:v1"); got != firstDigest {
			t.Errorf("blumeops/app:v1 = %s after ci's refused move, want %s", got, firstDigest)
		}
	})
	t.Run("anonymous pull", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "pulled")
		run(t, env, skopeo, "copy", "--retry-times", "0", "--src-tls-verify=false",
			"docker://"+addr+"/blumeops/app:v1", "oci:"+dir+":v1")
		if got := layoutDigest(t, dir); got != firstDigest {
			t.Errorf("anonymous pull got %s, want %s", got, firstDigest)
		}
		if got := remoteDigest(t, "blumeops/app:v1"); got != firstDigest {
			t.Errorf("inspect --raw hashes to %s, want %s", got, firstDigest)
		}
	})
	t.Run("anonymous push", func(t *testing.T) {
		runFail(t, env, skopeo, push(second, "blumeops/anon:v1")...)
		runFail(t, env, skopeo, "inspect", "--raw", "--retry-times", "0", "--tls-verify=false", "docker://"+addr+"/blumeops/anon:v1")
	})
	t.Run("ci outside blumeops", func(t *testing.T) {
		runFail(t, env, skopeo, push(first, "other/app:v1", ci)...)
		runFail(t, env, skopeo, "inspect", "--raw", "--retry-times", "0", "--tls-verify=false", "docker://"+addr+"/other/app:v1")
	})
	t.Run("admin moves the tag", func(t *testing.T) {
		run(t, env, skopeo, push(second, "blumeops/app:v1", admin)...)
		if got := remoteDigest(t, "blumeops/app:v1"); got != secondDigest {
			t.Errorf("blumeops/app:v1 = %s after admin's move, want %s", got, secondDigest)
		}
	})
	t.Run("crane", func(t *testing.T) {
		crane := tool(t, "crane")
		if got := strings.TrimSpace(run(t, env, crane, "digest", "--insecure", addr+"/blumeops/app:v1")); got != secondDigest {
			t.Errorf("anonymous crane digest = %s, want %s", got, secondDigest)
		}
		runFail(t, env, crane, "push", "--insecure", first, addr+"/blumeops/crane:v1")
	})
}
