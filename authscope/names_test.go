package authscope

import (
	"errors"
	"slices"
	"testing"
)

func testNames(t *testing.T) *Names {
	t.Helper()
	n, err := NewNames([]Namespace{
		{Prefix: "docker.io", Aliases: []string{"registry-1.docker.io", "index.docker.io"}, Hosts: []string{"docker.mirror.example"}, Default: true, LibraryPrefix: "library"},
		{Prefix: "ghcr.io"},
		{Prefix: "quay.io", Hosts: []string{"quay.mirror.example:8443"}},
	}, []string{"team", "ci/builds"})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestInternal(t *testing.T) {
	n := testNames(t)
	tests := []struct {
		typed string
		via   Via
		want  string
		err   error
	}{
		// podman, skopeo, crane: the prefix is part of the name
		{typed: "docker.io/library/debian", want: "docker.io/library/debian"},
		{typed: "ghcr.io/org/app", want: "ghcr.io/org/app"},
		// containerd hosts.toml without override_path
		{typed: "library/debian", via: Via{PathPrefix: "docker.io"}, want: "docker.io/library/debian"},
		{typed: "library/debian", via: Via{PathPrefix: "registry-1.docker.io"}, want: "docker.io/library/debian"},
		{typed: "debian", via: Via{PathPrefix: "docker.io"}, want: "docker.io/library/debian"},
		{typed: "x", via: Via{PathPrefix: "nope.io"}, err: ErrNamespaceUnknown},
		// containerd _default and Docker's containerd store: ?ns=
		{typed: "library/debian", via: Via{NS: "docker.io"}, want: "docker.io/library/debian"},
		{typed: "library/debian", via: Via{NS: "registry-1.docker.io"}, want: "docker.io/library/debian"},
		{typed: "org/app", via: Via{NS: "ghcr.io"}, want: "ghcr.io/org/app"},
		{typed: "app", via: Via{NS: "ghcr.io"}, want: "ghcr.io/app"},
		{typed: "org/app", via: Via{NS: "gcr.io"}, err: ErrNamespaceUnknown},
		// regctl --path-prefix docker.io with ns: already internal
		{typed: "docker.io/library/debian", via: Via{NS: "registry-1.docker.io"}, want: "docker.io/library/debian"},
		// the library prefix, however the one-component name is spelled
		{typed: "docker.io/alpine", want: "docker.io/library/alpine"},
		{typed: "docker.io/alpine", via: Via{PathPrefix: "docker.io"}, want: "docker.io/library/alpine"},
		{typed: "docker.io/alpine", via: Via{NS: "registry-1.docker.io"}, want: "docker.io/library/alpine"},
		{typed: "docker.io/alpine", via: Via{NS: "reg.example", Host: "reg.example:5000"}, want: "docker.io/library/alpine"},
		{typed: "docker.io/alpine", via: Via{Host: "quay.mirror.example:8443"}, want: "docker.io/library/alpine"},
		{typed: "ghcr.io/app", want: "ghcr.io/app"},
		// a prefixed name with an ns this server does not know (regctl
		// sends its configured hostname for docker.io): the path decides
		{typed: "docker.io/library/debian", via: Via{NS: "hub.mycorp.example"}, want: "docker.io/library/debian"},
		{typed: "docker.io/alpine", via: Via{NS: "hub.mycorp.example"}, want: "docker.io/library/alpine"},
		{typed: "ghcr.io/org/app", via: Via{NS: "hub.mycorp.example"}, want: "ghcr.io/org/app"},
		{typed: "library/debian", via: Via{NS: "hub.mycorp.example"}, err: ErrNamespaceUnknown},
		{typed: "team/app", via: Via{NS: "hub.mycorp.example"}, err: ErrNamespaceUnknown},
		// ns naming this very server: local
		{typed: "team/app", via: Via{NS: "reg.example:5000", Host: "reg.example:5000"}, want: "team/app"},
		{typed: "team/app", via: Via{NS: "reg.example", Host: "reg.example:5000"}, want: "team/app"},
		// ... even outside the local prefixes, where the default mirror
		// would otherwise take the name
		{typed: "someone/tool", via: Via{NS: "reg.example:5000", Host: "reg.example:5000"}, want: "someone/tool"},
		{typed: "docker.io/library/debian", via: Via{NS: "reg.example:5000", Host: "reg.example:5000"}, want: "docker.io/library/debian"},
		// Docker registry-mirrors: default namespace
		{typed: "library/debian", want: "docker.io/library/debian"},
		{typed: "debian", want: "docker.io/library/debian"},
		{typed: "someone/tool", want: "docker.io/someone/tool"},
		// local prefixes stay local despite the default
		{typed: "team/app", want: "team/app"},
		{typed: "team", want: "team"},
		{typed: "ci/builds/x", want: "ci/builds/x"},
		{typed: "ci/other", want: "docker.io/ci/other"},
		{typed: "teamx/app", want: "docker.io/teamx/app"},
		// host aliases
		{typed: "debian", via: Via{Host: "docker.mirror.example"}, want: "docker.io/library/debian"},
		{typed: "debian", via: Via{Host: "docker.mirror.example:5000"}, want: "docker.io/library/debian"},
		{typed: "org/app", via: Via{Host: "quay.mirror.example:8443"}, want: "quay.io/org/app"},
		// a host's absolute spelling (a trailing dot) is the same host:
		// otherwise its names fell to the default mirror, another
		// upstream's image under the same name
		{typed: "org/app", via: Via{Host: "quay.mirror.example.:8443"}, want: "quay.io/org/app"},
		{typed: "debian", via: Via{Host: "Docker.Mirror.Example."}, want: "docker.io/library/debian"},
		{typed: "team/app", via: Via{NS: "reg.example.", Host: "reg.example:5000"}, want: "team/app"},
		{typed: "org/app", via: Via{Host: "quay.mirror.example:9999"}, want: "docker.io/org/app"},
		// hostile names
		{typed: "../etc/passwd", err: ErrNameInvalid},
		{typed: "library/../../x", via: Via{NS: "docker.io"}, err: ErrNameInvalid},
		{typed: "/abs", err: ErrNameInvalid},
		{typed: "A/b", err: ErrNameInvalid},
		{typed: "", err: ErrNameInvalid},
		{typed: "a//b", err: ErrNameInvalid},
	}
	for _, tt := range tests {
		got, err := n.Internal(tt.typed, tt.via)
		if tt.err != nil {
			if !errors.Is(err, tt.err) {
				t.Errorf("Internal(%q, %+v) err = %v, want %v", tt.typed, tt.via, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("Internal(%q, %+v) = %q, %v; want %q", tt.typed, tt.via, got, err, tt.want)
		}
	}
}

func TestInternalNoNamespaces(t *testing.T) {
	var n *Names
	if got, err := n.Internal("a/b", Via{NS: "docker.io"}); err != nil || got != "a/b" {
		t.Fatalf("nil Names: %q, %v", got, err)
	}
	empty, err := NewNames(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := empty.Internal("a/b", Via{NS: "docker.io"}); !errors.Is(err, ErrNamespaceUnknown) {
		t.Fatalf("unknown ns: %v", err)
	}
}

func TestInternalLengthLimit(t *testing.T) {
	n := testNames(t)
	long := "a"
	for len(long) < MaxNameLength-len("library/") {
		long += "a"
	}
	if _, err := n.Internal(long, Via{NS: "docker.io"}); !errors.Is(err, ErrNameInvalid) {
		t.Fatalf("a name that grows past the limit when mapped must be refused: %v", err)
	}
}

func TestLookup(t *testing.T) {
	n := testNames(t)
	for name, want := range map[string]string{
		"docker.io/library/debian": "docker.io",
		"ghcr.io/x":                "ghcr.io",
		"docker.io":                "",
		"docker.iox/a":             "",
		"team/app":                 "",
	} {
		got := ""
		if ns := n.Lookup(name); ns != nil {
			got = ns.Prefix
		}
		if got != want {
			t.Errorf("Lookup(%q) = %q, want %q", name, got, want)
		}
	}
}

func TestNewNamesRefuses(t *testing.T) {
	tests := []struct {
		spaces []Namespace
		local  []string
	}{
		{spaces: []Namespace{{Prefix: "a/b"}}},
		{spaces: []Namespace{{Prefix: "Docker.io"}}},
		{spaces: []Namespace{{Prefix: ""}}},
		{spaces: []Namespace{{Prefix: "a"}, {Prefix: "a"}}},
		{spaces: []Namespace{{Prefix: "a", Aliases: []string{"b"}}, {Prefix: "b"}}},
		{spaces: []Namespace{{Prefix: "a", Default: true}, {Prefix: "b", Default: true}}},
		{spaces: []Namespace{{Prefix: "a"}}, local: []string{"a/x"}},
		{spaces: []Namespace{{Prefix: "a"}}, local: []string{"../x"}},
		{spaces: []Namespace{{Prefix: "a", LibraryPrefix: "Lib"}}},
	}
	for i, tt := range tests {
		if _, err := NewNames(tt.spaces, tt.local); err == nil {
			t.Errorf("case %d: NewNames(%+v, %v) accepted", i, tt.spaces, tt.local)
		}
	}
}

func FuzzInternal(f *testing.F) {
	f.Add("library/debian", "docker.io", "", "h")
	f.Add("debian", "", "docker.io", "docker.mirror.example")
	f.Add("../x", "", "", "")
	f.Fuzz(func(t *testing.T, typed, ns, prefix, host string) {
		n, err := NewNames([]Namespace{{Prefix: "docker.io", Default: true, LibraryPrefix: "library", Hosts: []string{"docker.mirror.example"}}, {Prefix: "ghcr.io"}}, []string{"team"})
		if err != nil {
			t.Fatal(err)
		}
		got, err := n.Internal(typed, Via{Host: host, NS: ns, PathPrefix: prefix})
		if err != nil {
			return
		}
		if !ValidName(got) {
			t.Fatalf("Internal(%q) = %q, not a valid name", typed, got)
		}
		// Mapping is idempotent: an internal name stays where it is.
		again, err := n.Internal(got, Via{})
		if err != nil || again != got {
			t.Fatalf("Internal(Internal(%q)) = %q, %v; want %q", typed, again, err, got)
		}
	})
}

func TestNamespaceWithDefaults(t *testing.T) {
	d := Namespace{Prefix: "docker.io", Aliases: []string{"mirror.gcr.io"}}.WithDefaults()
	if d.LibraryPrefix != "library" || !slices.Equal(d.Aliases, []string{"mirror.gcr.io", "registry-1.docker.io", "index.docker.io"}) {
		t.Errorf("docker.io: %+v", d)
	}
	if g := (Namespace{Prefix: "ghcr.io"}).WithDefaults(); g.LibraryPrefix != "" || len(g.Aliases) != 0 {
		t.Errorf("ghcr.io: %+v", g)
	}
	if k := (Namespace{Prefix: "docker.io", LibraryPrefix: "lib"}).WithDefaults(); k.LibraryPrefix != "lib" {
		t.Errorf("a configured library prefix was replaced: %+v", k)
	}
}
