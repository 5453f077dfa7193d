package e2e

import (
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/crypto/bcrypt"
)

// zotFixture writes the zot adapter's homelab fixture (three tiers:
// anonymous read, ci creates, admins) with its placeholders filled.
func zotFixture(t *testing.T, dir, port, upstream string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "caddymodule", "zotadapter", "testdata", "zot", "homelab.json"))
	if err != nil {
		t.Fatal(err)
	}
	var htpasswd strings.Builder
	for _, u := range [][2]string{{"ci", "ci-pw"}, {"root", "root-pw"}} {
		h, err := bcrypt.GenerateFromPassword([]byte(u[1]), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		htpasswd.WriteString(u[0] + ":" + string(h) + "\n")
	}
	if err := os.WriteFile(filepath.Join(dir, "htpasswd"), []byte(htpasswd.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := strings.NewReplacer("@DIR@", dir, "@PORT@", port, "@UPSTREAM@", upstream).Replace(string(b))
	path := filepath.Join(dir, "config.json")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestZotAdapter runs a zot config with the binary as a zot user would:
// `caddy adapt --adapter zot` prints the JSON, `caddy run --adapter zot`
// serves it, and skopeo finds what the zot config says: anonymous pull
// but no push, ci pushes new tags but moves and deletes none, root does,
// and the mirror pulls through from another registry.
func TestZotAdapter(t *testing.T) {
	needBinary(t)
	skopeo := tool(t, "skopeo")
	up := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer up.Close()
	upstreamImg, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}
	upRef, _ := name.ParseReference(strings.TrimPrefix(up.URL, "http://")+"/team/tool:1", name.Insecure)
	if err := remote.Write(upRef, upstreamImg); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	port := strconv.Itoa(freePort(t))
	config := zotFixture(t, dir, port, up.URL)

	cmd := exec.Command(caddyBin, "adapt", "--config", config, "--adapter", "zot")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("caddy adapt: %v\n%s", err, stderr.String())
	}
	var adapted map[string]any
	if err := json.Unmarshal(out, &adapted); err != nil || !strings.Contains(string(out), `"handler":"oci_registry"`) {
		t.Fatalf("caddy adapt printed %s (%v)", out, err)
	}

	admin := "localhost:" + strconv.Itoa(freePort(t))
	s := &server{t: t, config: config, addr: "127.0.0.1:" + port, admin: admin, dataDir: dir,
		readyStatus: http.StatusUnauthorized, adapter: "zot", env: []string{"CADDY_ADMIN=" + admin}}
	s.start()

	addr := s.localhostAddr()
	home := t.TempDir()
	env := []string{"REGISTRY_AUTH_FILE=" + filepath.Join(home, "auth.json"), "DOCKER_CONFIG=" + home, "HOME=" + home}
	first, firstDigest := newLayout(t)
	second, _ := newLayout(t)
	push := func(src, ref string, creds ...string) []string {
		args := []string{"copy", "--retry-times", "0", "--preserve-digests", "--dest-tls-verify=false"}
		if len(creds) > 0 {
			args = append(args, "--dest-creds", creds[0])
		}
		return append(args, "oci:"+src, "docker://"+addr+"/"+ref)
	}
	inspect := func(ref string) []string {
		return []string{"inspect", "--raw", "--retry-times", "0", "--tls-verify=false", "docker://" + addr + "/" + ref}
	}

	runFail(t, env, skopeo, push(first, "apps/web:1")...)
	run(t, env, skopeo, push(first, "apps/web:1", "ci:ci-pw")...)
	run(t, env, skopeo, inspect("apps/web:1")...)
	runFail(t, env, skopeo, push(second, "apps/web:1", "ci:ci-pw")...) // create, not update
	runFail(t, env, skopeo, "delete", "--retry-times", "0", "--tls-verify=false", "--creds", "ci:ci-pw", "docker://"+addr+"/apps/web@"+firstDigest)
	run(t, env, skopeo, "delete", "--retry-times", "0", "--tls-verify=false", "--creds", "root:root-pw", "docker://"+addr+"/apps/web@"+firstDigest)
	runFail(t, env, skopeo, inspect("apps/web@"+firstDigest)...)

	raw := run(t, env, skopeo, inspect("hub/team/tool:1")...)
	want, _ := upstreamImg.RawManifest()
	if strings.TrimSpace(raw) != strings.TrimSpace(string(want)) {
		t.Fatalf("mirror pull: got %s, want %s", raw, want)
	}
}
