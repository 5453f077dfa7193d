package caddymodule

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-oci/caddy-oci/registry/sigpolicy/sigtest"
)

func TestUnmarshalRequireSignature(t *testing.T) {
	input := `oci_registry {
		require_signature docker.io/myorg/** {
			cosign_key /etc/caddy/a.pub /etc/caddy/b.pub
			cosign_key /etc/caddy/c.pub
			notation_cert /etc/caddy/notation.pem
		}
		require_signature team/* {
			notation_cert /etc/caddy/ca.pem
			per_platform
		}
	}`
	var got Registry
	if err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err != nil {
		t.Fatal(err)
	}
	want := []*SignaturePolicy{
		{Match: "docker.io/myorg/**", CosignKeys: []string{"/etc/caddy/a.pub", "/etc/caddy/b.pub", "/etc/caddy/c.pub"}, NotationCerts: []string{"/etc/caddy/notation.pem"}},
		{Match: "team/*", NotationCerts: []string{"/etc/caddy/ca.pem"}, PerPlatform: true},
	}
	if !reflect.DeepEqual(got.RequireSignature, want) {
		b, _ := json.Marshal(got.RequireSignature)
		t.Fatalf("got %s", b)
	}
	// JSON field names, as the docs show them.
	b, _ := json.Marshal(want[1])
	if string(b) != `{"match":"team/*","notation_certs":["/etc/caddy/ca.pem"],"per_platform":true}` {
		t.Errorf("JSON %s", b)
	}

	for _, tc := range []struct{ block, want string }{
		{"require_signature {\n}", "require_signature needs exactly one repository pattern"},
		{"require_signature a b {\n}", "require_signature needs exactly one repository pattern"},
		{"require_signature team/**", "require_signature team/**: needs a block with at least one cosign_key or notation_cert"},
		{"require_signature team/** {\nper_platform\n}", "require_signature team/**: needs a block with at least one cosign_key or notation_cert"},
		{"require_signature team/** {\ncosign_key\n}", "require_signature team/**: cosign_key needs at least one file"},
		{"require_signature team/** {\nnotation_cert\n}", "require_signature team/**: notation_cert needs at least one file"},
		{"require_signature team/** {\ncosign_key /k\nper_platform yes\n}", "require_signature team/**: per_platform takes no argument"},
		{"require_signature team/** {\ncosign_keys /k\n}", `require_signature team/**: unrecognized subdirective "cosign_keys"`},
		{"require_signature team/** {\nfulcio_root /f.pem\n}", `require_signature team/**: fulcio_root: keyless cosign (Fulcio certificates, Rekor) is not supported`},
		{"require_signature team/** {\ncosign_key /k\ncertificate_identity a@b\n}", `require_signature team/**: certificate_identity: keyless cosign (Fulcio certificates, Rekor) is not supported`},
	} {
		var rg Registry
		err := rg.UnmarshalCaddyfile(caddyfile.NewTestDispenser("oci_registry {\n" + tc.block + "\n}"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.block, err, tc.want)
		}
	}
}

// Key and certificate files are read when the config loads: one that is
// missing or is not what it should be stops the load, naming the policy
// and the directive.
func TestRequireSignatureFilesAtLoad(t *testing.T) {
	dir := t.TempDir()
	key, err := sigtest.NewCosignKey()
	if err != nil {
		t.Fatal(err)
	}
	notary, err := sigtest.NewNotationSigner()
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	goodKey := write("cosign.pub", key.PublicPEM())
	goodCert := write("ca.pem", notary.RootPEM())
	garbage := write("garbage.pem", []byte("not a key"))
	missing := filepath.Join(dir, "missing.pub")
	for _, tc := range []struct {
		name   string
		policy map[string]any
		want   string // "" passes
	}{
		{"good", map[string]any{"match": "team/**", "cosign_keys": []string{goodKey}, "notation_certs": []string{goodCert}}, ""},
		{"missing key", map[string]any{"match": "team/**", "cosign_keys": []string{missing}}, "require_signature team/**: cosign_key: open " + missing},
		{"invalid key", map[string]any{"match": "team/**", "cosign_keys": []string{garbage}}, "require_signature team/**: cosign_key " + garbage + ": not a PEM public key"},
		{"cert as key", map[string]any{"match": "team/**", "cosign_keys": []string{goodCert}}, "cosign_key " + goodCert + ": a certificate, not a public key: keyless cosign (Fulcio certificates, Rekor) is not supported"},
		{"missing cert", map[string]any{"match": "team/**", "notation_certs": []string{missing}}, "require_signature team/**: notation_cert: open " + missing},
		{"invalid cert", map[string]any{"match": "team/**", "notation_certs": []string{garbage}}, "notation_cert " + garbage + ": no PEM certificate"},
		{"key as cert", map[string]any{"match": "team/**", "notation_certs": []string{goodKey}}, "notation_cert " + goodKey + ": no PEM certificate"},
		{"nothing to verify with", map[string]any{"match": "team/**"}, "require_signature team/**: policy team/**: no cosign_key and no notation_cert"},
		{"bad pattern", map[string]any{"match": "team/a**", "cosign_keys": []string{goodKey}}, "** must be a whole component"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, _ := json.Marshal(map[string]any{
				"admin": map[string]any{"disabled": true},
				"apps": map[string]any{"http": map[string]any{"servers": map[string]any{"s": map[string]any{
					"listen": []string{"127.0.0.1:0"},
					"routes": []map[string]any{{"handle": []map[string]any{{
						"handler": "oci_registry", "storage": filepath.Join(dir, "store-"+strings.ReplaceAll(tc.name, " ", "-")),
						"require_signature": []any{tc.policy},
					}}}},
				}}}},
			})
			err := caddy.Validate(mustConfig(t, cfg))
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Validate = %v\nwant an error with %q", err, tc.want)
			}
		})
	}
}
