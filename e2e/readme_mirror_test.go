package e2e

import (
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
)

// readmeSnippet returns the first code block of kind lang after heading in
// README.md, failing the test when the README no longer has it.
func readmeSnippet(t *testing.T, heading, lang string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "\n"+heading+"\n")
	if i < 0 {
		t.Fatalf("README has no heading %q", heading)
	}
	s = s[i:]
	start := strings.Index(s, "```"+lang+"\n")
	if start < 0 {
		t.Fatalf("README has no %s block after %q", lang, heading)
	}
	s = s[start+len("```"+lang+"\n"):]
	end := strings.Index(s, "```")
	if end < 0 {
		t.Fatalf("README's %s block after %q does not end", lang, heading)
	}
	return s[:end]
}

// TestReadmeMirrorPush runs the README's push example against its mirror
// snippet as written: the snippet's default mirror must not swallow the
// name the push example uses. The same push without `local me` is
// refused with a message that says why and what to add.
func TestReadmeMirrorPush(t *testing.T) {
	crane := tool(t, "crane")
	const push = "crane push --insecure ./image.tar localhost:5000/me/app:v1"
	if b, err := os.ReadFile(filepath.Join(repoRoot, "README.md")); err != nil || !strings.Contains(string(b), push) {
		t.Fatalf("README no longer shows %q; update this test with it (%v)", push, err)
	}
	snippet := readmeSnippet(t, "## Pull-through mirror", "caddyfile")
	if !strings.Contains(snippet, "storage ./registry-data") || !strings.Contains(snippet, "local me") {
		t.Fatalf("README's mirror snippet changed; update this test:\n%s", snippet)
	}
	src, want := newLayout(t)
	for _, keep := range []bool{true, false} {
		data := t.TempDir()
		site := strings.Replace(snippet, "storage ./registry-data", "storage "+strconv.Quote(data), 1)
		if !keep {
			// Without internet, Docker Hub is a registry in the test:
			// crane asks for the manifest before it pushes.
			up := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
			t.Cleanup(up.Close)
			site = strings.Replace(site, "local me team", "local team", 1)
			site = strings.Replace(site, "mirror docker.io {", "mirror docker.io {\n\t\tupstream "+up.URL, 1)
		}
		s := siteServer(t, data, site, 0)
		ref := s.localhostAddr() + "/me/app:v1"
		cmd := exec.Command(crane, "push", "--insecure", src, ref)
		out, err := cmd.CombinedOutput()
		if keep {
			if err != nil || !strings.Contains(string(out), want) {
				t.Fatalf("README's push against README's mirror snippet: %v\n%s", err, out)
			}
			continue
		}
		if err == nil {
			t.Fatalf("push into the default mirror succeeded:\n%s", out)
		}
		for _, w := range []string{`"me/app" was taken as "docker.io/me/app"`, "docker.io is the default mirror", `"local me"`} {
			if !strings.Contains(strings.ReplaceAll(string(out), `\"`, `"`), w) {
				t.Errorf("crane's refusal lacks %s:\n%s", w, out)
			}
		}
	}
}
