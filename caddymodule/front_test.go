package caddymodule

import (
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	ggcr "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/caddy-oci/caddy-oci/authscope/authtest"
)

func TestUnmarshalCaddyfileFront(t *testing.T) {
	for _, tc := range []struct {
		name, input string
		want        Front
		wantErr     string
	}{
		{name: "all", input: `oci_front {
			mirror docker.io {
				alias mirror.gcr.io
				host docker.mirror.example docker.mirror.internal:5000
				default
				library_prefix library
			}
			mirror ghcr.io
			local team ci
			token {
				realm https://auth.example/auth
				service registry.example
				proxy
				proxy_scheme https
			}
		}`, want: Front{
			Mirrors: []*FrontMirror{
				{Prefix: "docker.io", Aliases: []string{"mirror.gcr.io"}, Hosts: []string{"docker.mirror.example", "docker.mirror.internal:5000"}, Default: true, LibraryPrefix: "library"},
				{Prefix: "ghcr.io"},
			},
			LocalPrefixes: []string{"team", "ci"},
			Token:         &FrontToken{Realm: "https://auth.example/auth", Service: "registry.example", Proxy: true, ProxyScheme: "https"},
		}},
		{name: "argument", input: `oci_front http://zot`, wantErr: "takes no arguments"},
		{name: "unknown", input: "oci_front {\nupstream x\n}", wantErr: `unrecognized oci_front subdirective "upstream"`},
		{name: "mirror option of oci_registry", input: "oci_front {\nmirror docker.io {\nupstream https://x\n}\n}", wantErr: `unrecognized subdirective "upstream"`},
		{name: "mirror without prefix", input: "oci_front {\nmirror\n}", wantErr: "mirror needs a prefix"},
		{name: "empty alias", input: "oci_front {\nmirror docker.io {\nalias\n}\n}", wantErr: "alias needs at least one name"},
		{name: "default with arg", input: "oci_front {\nmirror docker.io {\ndefault yes\n}\n}", wantErr: "default takes no argument"},
		{name: "bad scheme", input: "oci_front {\ntoken {\nproxy_scheme ftp\n}\n}", wantErr: "http or https"},
		{name: "unknown token option", input: "oci_front {\ntoken {\nissuer x\n}\n}", wantErr: `unrecognized token subdirective "issuer"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got Front
			err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				a, _ := json.Marshal(got)
				b, _ := json.Marshal(tc.want)
				t.Errorf("got %s\nwant %s", a, b)
			}
		})
	}
}

func TestFrontValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		f       Front
		wantErr string
	}{
		{"no mirror", Front{}, "at least one mirror"},
		{"proxy without realm", Front{Mirrors: []*FrontMirror{{Prefix: "docker.io"}}, Token: &FrontToken{Proxy: true}}, "realm"},
		{"bad prefix", Front{Mirrors: []*FrontMirror{{Prefix: "docker.io/x"}}}, "one name component"},
		{"two defaults", Front{Mirrors: []*FrontMirror{{Prefix: "docker.io", Default: true}, {Prefix: "ghcr.io", Default: true}}}, "at most one mirror may be"},
		{"realm not a URL", Front{Mirrors: []*FrontMirror{{Prefix: "docker.io"}}, Token: &FrontToken{Proxy: true, Realm: "auth.example"}}, "http(s) URL"},
		{"proxy without service", Front{Mirrors: []*FrontMirror{{Prefix: "docker.io"}}, Token: &FrontToken{Proxy: true, Realm: "https://auth.example/auth"}}, "service"},
		{"service and realm disagree", Front{Mirrors: []*FrontMirror{{Prefix: "docker.io"}}, Token: &FrontToken{Proxy: true, Realm: "https://auth.example/auth?service=a", Service: "b"}}, "service"},
		{"ok", Front{Mirrors: []*FrontMirror{{Prefix: "docker.io", Default: true}}, Token: &FrontToken{Proxy: true, Realm: "https://auth.example/auth", Service: "registry.example"}}, ""},
		{"ok, service in the realm", Front{Mirrors: []*FrontMirror{{Prefix: "docker.io", Default: true}}, Token: &FrontToken{Proxy: true, Realm: "https://auth.example/auth?service=registry.example"}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.f.Validate()
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("Validate() = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

// The directive goes before reverse_proxy (and encode) at site level, so
// the Caddyfile that replaces nginx needs no route block.
func TestFrontDirectiveOrder(t *testing.T) {
	out := adaptFront(t, `http://:5000 {
	reverse_proxy zot:5000
	encode gzip
	oci_front {
		mirror docker.io {
			host docker.mirror.example
		}
	}
}`)
	front, enc, proxy := strings.Index(out, `"handler":"oci_front"`), strings.Index(out, `"handler":"encode"`), strings.Index(out, `"handler":"reverse_proxy"`)
	if front < 0 || !(front < enc && enc < proxy) {
		t.Errorf("handler order: oci_front@%d encode@%d reverse_proxy@%d; want that order\n%s", front, enc, proxy, out)
	}
}

func adaptFront(t testing.TB, input string) string {
	t.Helper()
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range warnings {
		t.Logf("warning: %s", w)
	}
	return string(out)
}

// Caddy runs the Caddyfile a user writes: oci_front and reverse_proxy to
// a registry that stores docker.io/library/debian; a pull by the bare
// name works, the tag list names what the client typed, and the token
// proxy forwards translated scopes.
func TestFrontInCaddy(t *testing.T) {
	backend := httptest.NewServer(ggcr.New(ggcr.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(backend.Close)
	is := authtest.New(nil, func(_, _, _ string, asked []string) []string { return asked })
	tokens := is.Start(t)

	img, err := random.Image(2048, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(strings.TrimPrefix(backend.URL, "http://")+"/docker.io/library/debian:bookworm", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}

	addr := freeAddr(t)
	cfg := adaptFront(t, `{
	admin off
	log {
		level ERROR
	}
}
http://`+addr+` {
	oci_front {
		mirror docker.io {
			default
		}
		token {
			realm `+tokens.URL+`/auth?tenant=acme
			service registry.test
			proxy
		}
	}
	reverse_proxy `+backend.URL+`
}`)
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopCaddy(t) })

	fref, _ := name.ParseReference(addr+"/debian:bookworm", name.Insecure)
	pulled, err := remote.Image(fref, remote.WithAuth(authn.Anonymous))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := pulled.Digest()
	if want, _ := img.Digest(); got != want {
		t.Errorf("pulled digest %s, want %s", got, want)
	}
	layers, err := pulled.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		// Read to the end, the layer's digest is verified.
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatalf("layer through Caddy: %v", err)
		}
		rc.Close()
	}

	resp, err := http.Get("http://" + addr + "/v2/debian/tags/list")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != `{"name":"debian","tags":["bookworm"]}`+"\n" {
		t.Errorf("tags/list: %d %s", resp.StatusCode, body)
	}

	// The client names another service and tenant; the token service
	// hears the configured ones only.
	asked := len(is.Requests())
	resp, err = http.Get("http://" + addr + "/_oci/token?service=other.example&tenant=evil&service=registry.test&scope=repository:debian:pull")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !slices.Equal(is.ScopesAsked(), []string{"repository:docker.io/library/debian:pull"}) {
		t.Errorf("token proxy: %d, issuer asked %q", resp.StatusCode, is.ScopesAsked())
	}
	for _, r := range is.Requests()[asked:] {
		if !slices.Equal(r.Query["service"], []string{"registry.test"}) || !slices.Equal(r.Query["tenant"], []string{"acme"}) {
			t.Errorf("token proxy forwarded service %q tenant %q; want the configured registry.test and acme", r.Query["service"], r.Query["tenant"])
		}
	}
}
