package e2e

import (
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestReadmeLayout checks the README's layout of the repository against
// the tree: every folder it names exists, and every folder holding Go
// files is named.
func TestReadmeLayout(t *testing.T) {
	block := readmeSnippet(t, "## Layout of this repository", "")
	listed := map[string]bool{}
	for _, line := range strings.Split(block, "\n") {
		if line == "" || strings.HasPrefix(line, " ") {
			continue // a description going on
		}
		p, _, _ := strings.Cut(line, " ")
		listed[strings.TrimSuffix(p, "/")] = true
		if _, err := os.Stat(filepath.Join(repoRoot, p)); err != nil {
			t.Errorf("the README's layout names %s: %v", p, err)
		}
	}
	err := filepath.WalkDir(repoRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(repoRoot, path)
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") && rel != ".") || d.IsDir() && d.Name() == "testdata" {
			return filepath.SkipDir
		}
		if d.IsDir() || rel == "." {
			return nil
		}
		dir := filepath.Dir(rel)
		if dir != "." && (strings.HasSuffix(rel, ".go") || strings.HasSuffix(rel, ".sql")) && !listed[dir] {
			t.Errorf("the README's layout does not name %s/", dir)
			listed[dir] = true // once
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestHashPasswordHtpasswd follows the README: a line made with
// `caddy hash-password` signs a user in.
func TestHashPasswordHtpasswd(t *testing.T) {
	needBinary(t)
	hash := strings.TrimSpace(run(t, nil, caddyBin, "hash-password", "--plaintext", "ci-password"))
	if !strings.HasPrefix(hash, "$2a$") {
		t.Fatalf("caddy hash-password printed %q; the README says a bcrypt hash ($2a$14$...)", hash)
	}
	dir := t.TempDir()
	htpasswd := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(htpasswd, []byte("ci:"+hash+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	s := siteServer(t, data, `	oci_registry {
		storage `+strconv.Quote(data)+`
		auth {
			htpasswd `+strconv.Quote(htpasswd)+`
			fail_delay 10ms
			access ** {
				default read
			}
		}
	}`, http.StatusUnauthorized)
	for pw, want := range map[string]int{"ci-password": http.StatusOK, "wrong": http.StatusUnauthorized} {
		req, _ := http.NewRequest(http.MethodGet, s.url("/v2/"), nil)
		req.SetBasicAuth("ci", pw)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET /v2/ as ci with password %q: %d, want %d", pw, resp.StatusCode, want)
		}
	}
}
