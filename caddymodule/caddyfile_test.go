package caddymodule

import (
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache"
)

func TestUnmarshalCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		input   string
		want    Registry
		wantErr string
	}{
		{name: "bare", input: `oci_registry`, want: Registry{}},
		{name: "empty block", input: "oci_registry {\n}", want: Registry{}},
		{
			name: "all",
			input: `oci_registry {
				storage /var/lib/registry
				max_manifest_size 4MiB
				upload_ttl 12h
				gc_interval 30m
				gc_grace 2h
				gc_full_interval 12h
			}`,
			want: Registry{
				Storage:         "/var/lib/registry",
				MaxManifestSize: 4 << 20,
				UploadTTL:       caddy.Duration(12 * time.Hour),
				GCInterval:      caddy.Duration(30 * time.Minute),
				GCGrace:         caddy.Duration(2 * time.Hour),
				GCFullInterval:  caddy.Duration(12 * time.Hour),
			},
		},
		{name: "sparse manifests", input: "oci_registry {\nsparse_manifests\n}", want: Registry{SparseManifests: true}},
		{name: "size in bytes", input: "oci_registry {\nmax_manifest_size 1000\n}", want: Registry{MaxManifestSize: 1000}},
		{name: "size SI", input: "oci_registry {\nmax_manifest_size 10MB\n}", want: Registry{MaxManifestSize: 10_000_000}},
		{name: "days", input: "oci_registry {\nupload_ttl 2d\n}", want: Registry{UploadTTL: caddy.Duration(48 * time.Hour)}},
		{name: "gc off", input: "oci_registry {\ngc_interval off\n}", want: Registry{GCInterval: -1}},
		{name: "scrub", input: "oci_registry {\nscrub_interval 24h\nscrub_rate 100MiB\n}", want: Registry{ScrubInterval: caddy.Duration(24 * time.Hour), ScrubRate: 100 << 20}},
		{name: "scrub off", input: "oci_registry {\nscrub_interval off\n}", want: Registry{ScrubInterval: -1}},
		{name: "read only", input: "oci_registry {\nread_only\n}", want: Registry{ReadOnly: true}},
		{name: "read only with argument", input: "oci_registry {\nread_only true\n}", wantErr: `read_only takes no arguments; got "true"`},
		{
			name: "upload limits",
			input: `oci_registry {
				upload_idle_timeout 30m
				max_uploads_per_client 64
				max_uploads_per_repository 300
				max_blob_size 20GiB
				max_upload_bytes 100GB
				max_upload_bytes_per_client 10GiB
			}`,
			want: Registry{
				UploadIdleTimeout:       caddy.Duration(30 * time.Minute),
				MaxUploadsPerClient:     64,
				MaxUploadsPerRepository: 300,
				MaxBlobSize:             20 << 30,
				MaxUploadBytes:          100_000_000_000,
				MaxUploadBytesPerClient: 10 << 30,
			},
		},
		{
			name: "upload limits off",
			input: `oci_registry {
				upload_idle_timeout off
				max_uploads_per_client off
				max_uploads_per_repository off
				max_blob_size off
				max_upload_bytes off
				max_upload_bytes_per_client off
			}`,
			want: Registry{UploadIdleTimeout: -1, MaxUploadsPerClient: -1, MaxUploadsPerRepository: -1, MaxBlobSize: -1, MaxUploadBytes: -1, MaxUploadBytesPerClient: -1},
		},
		{name: "zero uploads per client", input: "oci_registry {\nmax_uploads_per_client 0\n}", wantErr: "want a positive number or off"},
		{name: "negative uploads per repository", input: "oci_registry {\nmax_uploads_per_repository -5\n}", wantErr: "want a positive number or off"},
		{name: "bad blob size", input: "oci_registry {\nmax_blob_size huge\n}", wantErr: "want a size such as 10GiB"},
		{name: "zero upload bytes", input: "oci_registry {\nmax_upload_bytes 0\n}", wantErr: "want a size such as 10GiB"},
		{name: "bad upload bytes per client", input: "oci_registry {\nmax_upload_bytes_per_client lots\n}", wantErr: "want a size such as 10GiB"},
		{name: "bad idle timeout", input: "oci_registry {\nupload_idle_timeout -1h\n}", wantErr: "want a positive duration or off"},
		{name: "upload limit without argument", input: "oci_registry {\nmax_blob_size\n}", wantErr: "max_blob_size needs exactly one argument"},
		{name: "reserve size", input: "oci_registry {\nstorage_reserve 512MiB\n}", want: Registry{StorageReserve: 512 << 20}},
		{name: "reserve percent", input: "oci_registry {\nstorage_reserve 2.5%\n}", want: Registry{StorageReservePercent: 2.5}},
		{name: "reserve both", input: "oci_registry {\nstorage_reserve 5% 1GiB\n}", want: Registry{StorageReserve: 1 << 30, StorageReservePercent: 5}},
		{name: "reserve off", input: "oci_registry {\nstorage_reserve off\n}", want: Registry{StorageReserve: -1}},
		{name: "metadata dir", input: "oci_registry {\nmetadata_dir /fast/meta\n}", want: Registry{MetadataDir: "/fast/meta"}},
		{name: "reserve missing", input: "oci_registry {\nstorage_reserve\n}", wantErr: "storage_reserve takes a size"},
		{name: "reserve three", input: "oci_registry {\nstorage_reserve 1% 1GiB 2GiB\n}", wantErr: "storage_reserve takes a size"},
		{name: "reserve two sizes", input: "oci_registry {\nstorage_reserve 1GiB 2GiB\n}", wantErr: `storage_reserve "2GiB"`},
		{name: "reserve two percents", input: "oci_registry {\nstorage_reserve 1% 2%\n}", wantErr: `storage_reserve "2%"`},
		{name: "reserve zero", input: "oci_registry {\nstorage_reserve 0\n}", wantErr: `storage_reserve "0"`},
		{name: "reserve 100%", input: "oci_registry {\nstorage_reserve 100%\n}", wantErr: "below 100"},
		{name: "reserve negative percent", input: "oci_registry {\nstorage_reserve -1%\n}", wantErr: "above 0"},
		{name: "reserve NaN", input: "oci_registry {\nstorage_reserve NaN%\n}", wantErr: "above 0"},
		{name: "reserve off and size", input: "oci_registry {\nstorage_reserve off 1GiB\n}", wantErr: `storage_reserve "off"`},
		{name: "reserve junk", input: "oci_registry {\nstorage_reserve lots\n}", wantErr: `storage_reserve "lots"`},
		{name: "metadata dir missing", input: "oci_registry {\nmetadata_dir\n}", wantErr: "metadata_dir needs exactly one argument"},
		{name: "argument", input: `oci_registry /data`, wantErr: "takes no arguments"},
		{name: "unknown", input: "oci_registry {\nstorge /data\n}", wantErr: `unrecognized oci_registry subdirective "storge"`},
		{name: "unknown without arg", input: "oci_registry {\nfoo\n}", wantErr: `unrecognized oci_registry subdirective "foo"`},
		{name: "missing arg", input: "oci_registry {\nstorage\n}", wantErr: "storage needs exactly one argument"},
		{name: "extra arg", input: "oci_registry {\nstorage a b\n}", wantErr: "storage needs exactly one argument"},
		{name: "sparse manifests with argument", input: "oci_registry {\nsparse_manifests yes\n}", wantErr: "sparse_manifests takes no argument"},
		{name: "bad size", input: "oci_registry {\nmax_manifest_size lots\n}", wantErr: "parsing max_manifest_size"},
		{name: "zero size", input: "oci_registry {\nmax_manifest_size 0\n}", wantErr: "out of range"},
		{name: "bad duration", input: "oci_registry {\nupload_ttl soon\n}", wantErr: "parsing upload_ttl"},
		{name: "negative duration", input: "oci_registry {\ngc_grace -1h\n}", wantErr: "gc_grace must be positive"},
		{name: "negative full interval", input: "oci_registry {\ngc_full_interval -1h\n}", wantErr: "gc_full_interval must be positive"},
		{name: "zero full interval", input: "oci_registry {\ngc_full_interval 0s\n}", wantErr: "gc_full_interval must be positive"},
		{name: "full interval not off", input: "oci_registry {\ngc_full_interval off\n}", wantErr: "parsing gc_full_interval"},
		{name: "scrub rate too low", input: "oci_registry {\nscrub_rate 100KiB\n}", wantErr: "scrub_rate \"100KiB\": want a size per second between 1MiB and 1TiB"},
		{name: "scrub rate not a size", input: "oci_registry {\nscrub_rate fast\n}", wantErr: "scrub_rate \"fast\""},
		{name: "scrub interval zero", input: "oci_registry {\nscrub_interval 0s\n}", wantErr: "scrub_interval must be positive"},
		{name: "off only for gc_interval", input: "oci_registry {\ngc_grace off\n}", wantErr: "parsing gc_grace"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got Registry
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
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestJSONRoundTrip(t *testing.T) {
	in := Registry{
		Storage:                 "/srv/oci",
		StorageReserve:          1 << 30,
		StorageReservePercent:   2,
		MetadataDir:             "/fast/oci-meta",
		MaxManifestSize:         8 << 20,
		UploadTTL:               caddy.Duration(6 * time.Hour),
		GCInterval:              caddy.Duration(15 * time.Minute),
		GCGrace:                 caddy.Duration(90 * time.Minute),
		UploadIdleTimeout:       caddy.Duration(20 * time.Minute),
		MaxUploadsPerClient:     50,
		MaxUploadsPerRepository: -1,
		MaxBlobSize:             1 << 30,
		MaxUploadBytes:          8 << 30,
		MaxUploadBytesPerClient: 2 << 30,
		GCFullInterval:          caddy.Duration(48 * time.Hour),
		ScrubInterval:           caddy.Duration(72 * time.Hour),
		ScrubRate:               64 << 20,
		ReadOnly:                true,
	}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out Registry
	if err := caddy.StrictUnmarshalJSON(b, &out); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Errorf("round trip: got %+v, want %+v (json %s)", out, in, b)
	}
	for _, key := range []string{"storage", "storage_reserve", "storage_reserve_percent", "metadata_dir", "max_manifest_size", "upload_ttl", "gc_interval", "gc_grace", "gc_full_interval", "scrub_interval", "scrub_rate",
		"upload_idle_timeout", "max_uploads_per_client", "max_uploads_per_repository", "max_blob_size", "max_upload_bytes", "max_upload_bytes_per_client", "read_only"} {
		if !strings.Contains(string(b), `"`+key+`"`) {
			t.Errorf("json %s lacks %q", b, key)
		}
	}
	empty, err := json.Marshal(Registry{})
	if err != nil {
		t.Fatal(err)
	}
	if string(empty) != "{}" {
		t.Errorf("zero config marshals to %s, want {}", empty)
	}
	// Durations are also accepted as strings, as everywhere in Caddy.
	if err := json.Unmarshal([]byte(`{"upload_ttl":"1h","gc_interval":"1d"}`), &out); err != nil {
		t.Fatal(err)
	}
	if time.Duration(out.UploadTTL) != time.Hour || time.Duration(out.GCInterval) != 24*time.Hour {
		t.Errorf("string durations: got %v, %v", time.Duration(out.UploadTTL), time.Duration(out.GCInterval))
	}
}

// TestDirectiveOrder checks that the directive works at site level without
// a route block and lands after auth, before encode and file_server.
func TestDirectiveOrder(t *testing.T) {
	const input = `http://:5000 {
	file_server
	encode gzip
	oci_registry {
		storage ./data
		max_manifest_size 1MiB
	}
	basic_auth {
		admin $2a$14$Zkx19XLiW6VYouLHR5NmfOFU0z2GTNmpkT/5qqR7hx4IjWJPDhjvG
	}
}`
	adapter := caddyconfig.GetAdapter("caddyfile")
	out, warnings, err := adapter.Adapt([]byte(input), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range warnings {
		t.Logf("warning: %s", w)
	}
	s := string(out)
	idx := func(handler string) int {
		i := strings.Index(s, `"handler":"`+handler+`"`)
		if i < 0 {
			t.Fatalf("adapted config lacks handler %s: %s", handler, s)
		}
		return i
	}
	auth, reg, enc, fs := idx("authentication"), idx("oci_registry"), idx("encode"), idx("file_server")
	if !(auth < reg && reg < enc && enc < fs) {
		t.Errorf("handler order: authentication@%d oci_registry@%d encode@%d file_server@%d; want that order\n%s", auth, reg, enc, fs, s)
	}
	if !strings.Contains(s, `"max_manifest_size":1048576`) || !strings.Contains(s, `"storage":"./data"`) {
		t.Errorf("adapted handler config: %s", s)
	}
}

func TestUnmarshalCaddyfileMirror(t *testing.T) {
	input := `oci_registry {
		local team ci
		mirror docker.io {
			upstream https://a.example https://b.example
			username {env.HUB_USER}
			password {env.HUB_TOKEN}
			tag_ttl 10m
			stale_if_error 48h
			dial_timeout 3s
			response_header_timeout 45s
			stall_timeout 2m
			max_blob_size 10GiB
			max_concurrent_fills 8
			alias registry-1.docker.io
			host docker.mirror.example
			default
		}
		mirror ghcr.io {
			upstream_prefix vendor/tools
			prefetch
		}
		mirror registry.local {
			insecure_skip_verify
			ca_file /etc/ca.pem
			library_prefix library
			repositories team/public/** library/*
		}
	}`
	var got Registry
	if err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err != nil {
		t.Fatal(err)
	}
	want := Registry{
		LocalPrefixes: []string{"team", "ci"},
		Mirrors: []*Mirror{
			{Prefix: "docker.io", Upstreams: []string{"https://a.example", "https://b.example"},
				Username: "{env.HUB_USER}", Password: "{env.HUB_TOKEN}",
				TagTTL: caddy.Duration(10 * time.Minute), StaleIfError: caddy.Duration(48 * time.Hour),
				DialTimeout: caddy.Duration(3 * time.Second), ResponseHeaderTimeout: caddy.Duration(45 * time.Second), StallTimeout: caddy.Duration(2 * time.Minute),
				MaxBlobSize: 10 << 30, MaxConcurrentFills: 8,
				Aliases: []string{"registry-1.docker.io"}, Hosts: []string{"docker.mirror.example"}, Default: true},
			{Prefix: "ghcr.io", UpstreamPrefix: "vendor/tools", Prefetch: true},
			{Prefix: "registry.local", InsecureSkipVerify: true, CAFile: "/etc/ca.pem", LibraryPrefix: "library",
				Repositories: []string{"team/public/**", "library/*"}},
		},
	}
	if !reflect.DeepEqual(got, want) {
		gj, _ := json.Marshal(got)
		wj, _ := json.Marshal(want)
		t.Fatalf("got  %s\nwant %s", gj, wj)
	}
	for _, bad := range []string{
		"oci_registry {\nmirror\n}",
		"oci_registry {\nmirror a b\n}",
		"oci_registry {\nmirror a {\ntag_ttl soon\n}\n}",
		"oci_registry {\nmirror a {\nfoo\n}\n}",
		"oci_registry {\nmirror a {\ndefault yes\n}\n}",
		"oci_registry {\nmirror a {\ndial_timeout\n}\n}",
		"oci_registry {\nmirror a {\nresponse_header_timeout 0s\n}\n}",
		"oci_registry {\nmirror a {\nstall_timeout -1s\n}\n}",
		"oci_registry {\nmirror a {\nstall_timeout 1m 2m\n}\n}",
		"oci_registry {\nmirror a {\nmax_blob_size big\n}\n}",
		"oci_registry {\nmirror a {\nmax_blob_size 0\n}\n}",
		"oci_registry {\nmirror a {\nmax_concurrent_fills 0\n}\n}",
		"oci_registry {\nmirror a {\nmax_concurrent_fills -3\n}\n}",
		"oci_registry {\nmirror a {\nmax_concurrent_fills 1 2\n}\n}",
		"oci_registry {\nmirror a {\nrepositories\n}\n}",
		"oci_registry {\nmirror a {\nupstream_prefix\n}\n}",
		"oci_registry {\nmirror a {\nprefetch on\n}\n}",
		"oci_registry {\nlocal\n}",
	} {
		var r Registry
		if err := r.UnmarshalCaddyfile(caddyfile.NewTestDispenser(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func TestBuildMirrors(t *testing.T) {
	t.Setenv("HUB_TOKEN", "s3cret")
	ms, err := buildMirrors([]*Mirror{{Prefix: "docker.io", Password: "{env.HUB_TOKEN}", Default: true}, {Prefix: "ghcr.io"}}, []string{"team"}, 0, caddy.NewReplacer(), zap.NewNop())
	if err != nil || len(ms) != 2 {
		t.Fatalf("buildMirrors: %v", err)
	}
	if ns := ms[0].Namespace(); ns.LibraryPrefix != "library" || len(ns.Aliases) != 2 {
		t.Fatalf("docker.io defaults missing: %+v", ns)
	}
	// upstream_prefix instead of docker.io's library prefix, in the
	// registry's names and in the config's own.
	up := &Mirror{Prefix: "docker.io", UpstreamPrefix: "vendor"}
	if ms, err := buildMirrors([]*Mirror{up}, nil, 0, caddy.NewReplacer(), zap.NewNop()); err != nil || ms[0].Namespace().LibraryPrefix != "" || up.namespace().LibraryPrefix != "" {
		t.Fatalf("docker.io with upstream_prefix: %v, library prefix kept", err)
	}
	for _, bad := range [][]*Mirror{
		{{Prefix: "a", Default: true}, {Prefix: "b", Default: true}},
		{{Prefix: "a/b"}},
		{{Prefix: "a", LibraryPrefix: "l", UpstreamPrefix: "u"}},
		{{Prefix: "a", Upstreams: []string{"ftp://x"}}},
		{{Prefix: "a", Upstreams: []string{"https://hub-user:hub-pass@registry.example"}}},
	} {
		if _, err := buildMirrors(bad, nil, 0, caddy.NewReplacer(), zap.NewNop()); err == nil {
			t.Errorf("accepted %+v", bad[0])
		}
	}
}

func TestMirrorBlobLimit(t *testing.T) {
	for _, tc := range []struct{ maxBlob, cache, want int64 }{
		{0, 0, 0},        // neither: no limit
		{100, 0, 100},    // max_blob_size alone
		{0, 500, 500},    // a blob larger than the cache is never fetched
		{100, 500, 100},  // the smaller wins
		{1000, 500, 500}, // an explicit limit past the cache is capped
		{-1, 500, 500},   // negative (JSON) is no explicit limit
	} {
		if got := mirrorBlobLimit(tc.maxBlob, tc.cache); got != tc.want {
			t.Errorf("mirrorBlobLimit(%d, %d) = %d, want %d", tc.maxBlob, tc.cache, got, tc.want)
		}
	}
}

// TestBuildMirrorsRefusesUserinfo: credentials in an upstream URL are
// refused at provision, pointing to username and password, and the error
// (which reaches Caddy's log) does not repeat the password.
func TestBuildMirrorsRefusesUserinfo(t *testing.T) {
	for _, u := range []string{"https://hub-user:hub-pass@registry.example", "https://hub-user:hub-pass@registry.example:bad port"} {
		_, err := buildMirrors([]*Mirror{{Prefix: "a", Upstreams: []string{u}}}, nil, 0, caddy.NewReplacer(), zap.NewNop())
		if err == nil {
			t.Fatalf("%s accepted", u)
		}
		if strings.Contains(err.Error(), "hub-pass") {
			t.Errorf("error repeats the password: %v", err)
		}
		if !strings.Contains(u, "bad port") && !strings.Contains(err.Error(), "username and password") {
			t.Errorf("error does not point to username and password: %v", err)
		}
	}
}

// TestBlockArguments pins the wording and the limits that the argument-less
// blocks (token, oidc, api_keys, workload, oci_front's token) share through
// eachSubdirective, oneArg, durationArg and proxySchemeArg.
func TestBlockArguments(t *testing.T) {
	for _, tc := range []struct{ block, wantErr string }{
		{"oidc x {\n}", "wrong argument count or unexpected line ending after 'x'"},
		{"oidc {\nissuer a b\n}", "issuer needs exactly one argument"},
		{"oidc {\nnope\n}", "nope needs exactly one argument"},
		{"oidc {\nsession_ttl -1s\n}", `session_ttl "-1s": not a duration`},
		{"oidc {\nsession_ttl 1d\n}", ""},
		{"api_keys {\nmax_ttl\n}", "max_ttl needs exactly one argument"},
		{"api_keys {\ndefault_ttl soon\n}", `default_ttl "soon": not a duration`},
		{"api_keys {\nmax_ttl 0\n}", ""},
		{"workload x {\n}", "wrong argument count or unexpected line ending after 'x'"},
		{"workload {\naudience a b\n}", "audience needs exactly one argument"},
		{"token {\nrealm\n}", "realm needs exactly one argument"},
		{"token {\nleeway -5s\n}", `leeway "-5s": not a duration`},
		{"token {\nproxy_scheme ftp\n}", "proxy_scheme takes one argument: http or https"},
		{"token {\nproxy_scheme https\n}", ""},
	} {
		d := caddyfile.NewTestDispenser("auth {\n" + tc.block + "\n}")
		d.Next()
		_, err := unmarshalAuth(d)
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%q: err %v, want %q", tc.block, err, tc.wantErr)
		}
	}
	for _, tc := range []struct{ block, wantErr string }{
		{"token x {\n}", "wrong argument count or unexpected line ending after 'x'"},
		{"token {\nservice a b\n}", "service needs exactly one argument"},
		{"token {\nproxy_scheme\n}", "proxy_scheme takes one argument: http or https"},
		{"token {\nproxy_scheme http\n}", ""},
	} {
		var f Front
		err := f.UnmarshalCaddyfile(caddyfile.NewTestDispenser("oci_front {\n" + tc.block + "\n}"))
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("oci_front %q: err %v, want %q", tc.block, err, tc.wantErr)
		}
	}
}

// TestValidateUploadLimits: an idle timeout longer than the life of a
// session is a mistake; the default idle timeout under a short
// upload_ttl is not.
func TestValidateUploadLimits(t *testing.T) {
	for _, tc := range []struct {
		rg      Registry
		wantErr string
	}{
		{rg: Registry{}},
		{rg: Registry{UploadTTL: caddy.Duration(30 * time.Minute)}},
		{rg: Registry{UploadIdleTimeout: caddy.Duration(2 * time.Hour), UploadTTL: caddy.Duration(3 * time.Hour)}},
		{rg: Registry{UploadIdleTimeout: -1}},
		{rg: Registry{UploadIdleTimeout: caddy.Duration(25 * time.Hour)}, wantErr: "longer than upload_ttl"},
		{rg: Registry{UploadIdleTimeout: caddy.Duration(2 * time.Hour), UploadTTL: caddy.Duration(time.Hour)}, wantErr: "longer than upload_ttl"},
	} {
		err := tc.rg.Validate()
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%+v: error %v, want %q", tc.rg, err, tc.wantErr)
		}
	}
}

// TestStorageReserve checks what JSON may say about the reserve and what
// reaches the store.
func TestStorageReserve(t *testing.T) {
	for _, tc := range []struct {
		name    string
		rg      Registry
		want    cache.SpaceReserve
		wantErr string
	}{
		{name: "default", rg: Registry{}, want: cache.DefaultReserve},
		{name: "size only", rg: Registry{StorageReserve: 1 << 30}, want: cache.SpaceReserve{Bytes: 1 << 30}},
		{name: "percent only", rg: Registry{StorageReservePercent: 5}, want: cache.SpaceReserve{Percent: 5}},
		{name: "both", rg: Registry{StorageReserve: 64 << 20, StorageReservePercent: 2}, want: cache.SpaceReserve{Bytes: 64 << 20, Percent: 2}},
		{name: "off", rg: Registry{StorageReserve: -1}, want: cache.SpaceReserve{}},
		{name: "percent 100", rg: Registry{StorageReservePercent: 100}, wantErr: "storage_reserve_percent"},
		{name: "negative percent", rg: Registry{StorageReservePercent: -1}, wantErr: "storage_reserve_percent"},
		{name: "NaN percent", rg: Registry{StorageReservePercent: math.NaN()}, wantErr: "storage_reserve_percent"},
		{name: "off with percent", rg: Registry{StorageReserve: -1, StorageReservePercent: 1}, wantErr: "storage_reserve is negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.rg.Validate()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Validate() = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := tc.rg.storageSettings().reserve(); got != tc.want {
				t.Errorf("reserve() = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestMetadataDirInsideStorage: GC empties tmp/ and uploads/, so the
// metadata may not live there (nor in blobs/ or the folder itself).
func TestMetadataDirInsideStorage(t *testing.T) {
	dir := t.TempDir()
	for _, meta := range []string{dir, dir + "/tmp", dir + "/uploads/db", dir + "/blobs"} {
		rg := Registry{dir: dir, metaDir: meta}
		if err := rg.Validate(); err == nil || !strings.Contains(err.Error(), "metadata_dir") {
			t.Errorf("metadata_dir %s: Validate() = %v, want a refusal", meta, err)
		}
	}
	rg := Registry{dir: dir, metaDir: t.TempDir()}
	if err := rg.Validate(); err != nil {
		t.Errorf("metadata_dir elsewhere: %v", err)
	}
}
