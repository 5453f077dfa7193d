package caddymodule

import (
	"encoding/json"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// Config mistakes a newcomer made: each is refused by Caddy's own
// Caddyfile adapter with a message that names the directive and the line,
// not only after Caddy's chain of module names at provision.
func TestConfigErrorsNameDirectiveAndLine(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, block string
		line        int
		want        []string
	}{
		{"unknown action", "auth {\n\t\t\taccess ** {\n\t\t\t\tanonymous raed\n\t\t\t}\n\t\t}", 6,
			[]string{`access **: anonymous: unknown action "raed" (known: read, create, update, delete)`}},
		{"unknown admin action", "auth {\n\t\t\tgroup admins root\n\t\t\tadmin groups admins actions all\n\t\t}", 6,
			[]string{`admin: unknown action "all"`}},
		{"undefined group", "auth {\n\t\t\taccess ** {\n\t\t\t\tanonymous read\n\t\t\t\tgroup devs read create\n\t\t\t}\n\t\t}", 7,
			[]string{`access **: group "devs" is not defined`, `"group devs <user>..."`}},
		{"undefined admin group", "auth {\n\t\t\tadmin groups ops\n\t\t\taccess ** {\n\t\t\t\tanonymous read\n\t\t\t}\n\t\t}", 5,
			[]string{`admin: group "ops" is not defined`}},
		{"two defaults", "mirror docker.io {\n\t\t\tdefault\n\t\t}\n\t\tmirror ghcr.io {\n\t\t\tdefault\n\t\t}", 7,
			[]string{"mirror ghcr.io: default: mirror docker.io is already the default, and at most one mirror may be"}},
		{"local under a mirror", "mirror docker.io {\n\t\t\tdefault\n\t\t}\n\t\tlocal team docker.io/me", 7,
			[]string{"local docker.io/me: lies inside mirror docker.io", "local me"}},
		{"upstream without scheme", "mirror ghcr.io {\n\t\t\tupstream ghcr.io\n\t\t}", 5,
			[]string{`mirror ghcr.io: upstream: "ghcr.io" is not an http(s) URL; write https://ghcr.io`}},
		{"unknown subdirective", "authx {\n\t\t}", 4,
			[]string{`unrecognized oci_registry subdirective "authx"`, "local, read_only, auth)"}},
		{"access rules on its line", "auth {\n\t\t\taccess ** anonymous read\n\t\t}", 5,
			[]string{"access ** anonymous read: the rules go in a block, one per line"}},
		{"access without block", "auth {\n\t\t\thtpasswd /x\n\t\t\taccess **\n\t\t}", 6,
			[]string{"access **: needs a block of rules"}},
		// Caddy's parser refuses a block on one line before any
		// directive sees it; its message has the line.
		{"one-line block", "mirror ghcr.io { upstream https://ghcr.io }", 4,
			[]string{"Unexpected next token after '{' on same line"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(dir, "Caddyfile")
			// The block starts on line 4.
			cfg := "http://127.0.0.1:1 {\n\toci_registry {\n\t\tstorage " + dir + "\n\t\t" + tc.block + "\n\t}\n}\n"
			_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), map[string]any{"filename": file})
			if err == nil {
				t.Fatalf("accepted:\n%s", cfg)
			}
			for _, w := range append(tc.want, file+":"+strconv.Itoa(tc.line)) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v\nconfig:\n%s", w, err, numbered(cfg))
				}
			}
		})
	}
}

// oci_front's mirrors and local prefixes get the same checks at their
// lines.
func TestFrontConfigErrorsNameLine(t *testing.T) {
	file := filepath.Join(t.TempDir(), "Caddyfile")
	for _, tc := range []struct {
		block, want string
		line        int
	}{
		{"mirror docker.io {\n\t\t\tdefault\n\t\t}\n\t\tmirror ghcr.io {\n\t\t\tdefault\n\t\t}", "mirror ghcr.io: default: mirror docker.io is already the default", 6},
		{"mirror docker.io\n\t\tlocal docker.io/team", "local docker.io/team: lies inside mirror docker.io", 4},
	} {
		cfg := "http://127.0.0.1:1 {\n\toci_front {\n\t\t" + tc.block + "\n\t}\n\treverse_proxy 127.0.0.1:2\n}\n"
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), map[string]any{"filename": file})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), file+":"+strconv.Itoa(tc.line)) {
			t.Errorf("error %v\nwant %q at line %d of:\n%s", err, tc.want, tc.line, numbered(cfg))
		}
	}
}

// The same mistakes in JSON are refused at provision with the directive
// named, since JSON has no lines.
func TestConfigErrorsInJSON(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name    string
		handler map[string]any
		want    string
	}{
		{"two defaults", map[string]any{"mirrors": []map[string]any{{"prefix": "docker.io", "default": true}, {"prefix": "ghcr.io", "default": true}}},
			"mirror ghcr.io: default: mirror docker.io is already the default"},
		{"local under a mirror", map[string]any{"mirrors": []map[string]any{{"prefix": "docker.io", "default": true}}, "local_prefixes": []string{"docker.io/me"}},
			"local docker.io/me: lies inside mirror docker.io"},
		{"upstream without scheme", map[string]any{"mirrors": []map[string]any{{"prefix": "ghcr.io", "upstreams": []string{"ghcr.io"}}}},
			`mirror ghcr.io: upstream: "ghcr.io" is not an http(s) URL; write https://ghcr.io`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.handler["handler"] = "oci_registry"
			tc.handler["storage"] = filepath.Join(dir, tc.name)
			cfg, _ := json.Marshal(map[string]any{
				"admin": map[string]any{"disabled": true},
				"apps": map[string]any{"http": map[string]any{"servers": map[string]any{"s": map[string]any{
					"listen": []string{"127.0.0.1:0"},
					"routes": []map[string]any{{"handle": []map[string]any{tc.handler}}},
				}}}},
			})
			err := caddy.Validate(mustConfig(t, cfg))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate = %v\nwant an error with %q", err, tc.want)
			}
		})
	}
}

func mustConfig(t *testing.T, b []byte) *caddy.Config {
	t.Helper()
	var c caddy.Config
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return &c
}

func numbered(s string) string {
	lines := strings.Split(s, "\n")
	for i := range lines {
		lines[i] = strconv.Itoa(i+1) + "  " + lines[i]
	}
	return strings.Join(lines, "\n")
}
