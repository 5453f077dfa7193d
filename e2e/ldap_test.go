package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/caddy-oci/caddy-oci/authscope/ldapauth/slapdtest"
)

// TestLDAPClients: skopeo and crane log in to the binary with users of a
// real slapd (StartTLS, the test CA as ca_file, a service account from a
// file): a member of the directory's devs pushes under team/, others may
// only pull, injections are refused, and while the directory is down
// clients are told 503, not that their password is wrong; logins work
// again once it is back.
func TestLDAPClients(t *testing.T) {
	skopeo := tool(t, "skopeo")
	crane := tool(t, "crane")
	needBinary(t)
	dir := slapdtest.Start(t)
	dir.AddUser(t, "alice", "alice-pw")
	dir.AddUser(t, "bob", "bob-pw")
	dir.AddUser(t, "dave", "dave-pw")
	dir.AddGroup(t, "devs", "alice", "dave")

	tmp := t.TempDir()
	pwFile := filepath.Join(tmp, "ldap-password")
	if err := os.WriteFile(pwFile, []byte(slapdtest.ReaderPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(tmp, "data")
	s := siteServer(t, dataDir, fmt.Sprintf(`	oci_registry {
		storage %s
		auth {
			fail_delay 10ms
			ldap {
				url %s
				start_tls
				ca_file %s
				bind_dn %s
				bind_password_file %s
				base_dn %s
				timeout 2s
			}
			access ** {
				default read
			}
			access team/** {
				default read
				group devs read create
			}
		}
	}`, strconv.Quote(dataDir), dir.URL, strconv.Quote(dir.CAFile), strconv.Quote(slapdtest.ReaderDN),
		strconv.Quote(pwFile), strconv.Quote(slapdtest.BaseDN)), http.StatusUnauthorized)
	addr := s.localhostAddr()
	home := t.TempDir()
	env := []string{"REGISTRY_AUTH_FILE=" + filepath.Join(home, "auth.json"), "DOCKER_CONFIG=" + home, "HOME=" + home}
	layout, _ := newLayout(t)
	push := func(ref, creds string) []string {
		return []string{"copy", "--retry-times", "0", "--dest-tls-verify=false", "--dest-creds", creds, "oci:" + layout, "docker://" + addr + "/" + ref}
	}

	run(t, env, skopeo, push("team/app:v1", "alice:alice-pw")...)
	if out := runFail(t, env, skopeo, push("team/bob:v1", "bob:bob-pw")...); !strings.Contains(strings.ToLower(out), "denied") {
		t.Errorf("bob's push: want a denial, got:\n%s", out)
	}
	run(t, env, skopeo, "inspect", "--raw", "--retry-times", "0", "--tls-verify=false", "--creds", "bob:bob-pw", "docker://"+addr+"/team/app:v1")
	for _, creds := range []string{"al*:alice-pw", "*)(uid=alice:alice-pw", "alice:wrong"} {
		if out := runFail(t, env, skopeo, push("team/x:v1", creds)...); !strings.Contains(strings.ToLower(out), "unauthorized") {
			t.Errorf("%s: want unauthorized, got:\n%s", creds, out)
		}
	}

	run(t, env, crane, "auth", "login", addr, "-u", "alice", "-p", "alice-pw")
	run(t, env, crane, "push", "--insecure", layout, addr+"/team/crane:v1")

	dir.Stop()
	out := runFail(t, env, skopeo, push("team/dave:v1", "dave:dave-pw")...)
	t.Logf("directory down, skopeo says: %s", out)
	if !strings.Contains(out, "503") && !strings.Contains(strings.ToLower(out), "unavailable") {
		t.Errorf("directory down: want 503 / unavailable, got:\n%s", out)
	}
	if strings.Contains(strings.ToLower(out), "unauthorized") {
		t.Errorf("directory down: the client was told its credentials are wrong:\n%s", out)
	}
	dir.Restart(t)
	run(t, env, skopeo, push("team/dave:v1", "dave:dave-pw")...)
}
