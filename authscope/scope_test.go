package authscope

import (
	"slices"
	"testing"
)

func TestParseScope(t *testing.T) {
	tests := []struct {
		in      string
		want    Scope
		wantErr bool
	}{
		{in: "repository:library/debian:pull", want: Scope{Type: "repository", Name: "library/debian", Actions: []string{"pull"}}},
		{in: "repository:library/debian:pull,push", want: Scope{Type: "repository", Name: "library/debian", Actions: []string{"pull", "push"}}},
		{in: "repository:localhost:5000/x/y:pull", want: Scope{Type: "repository", Name: "localhost:5000/x/y", Actions: []string{"pull"}}},
		{in: "registry:catalog:*", want: Scope{Type: "registry", Name: "catalog", Actions: []string{"*"}}},
		{in: "repository(plugin):a/b:pull", want: Scope{Type: "repository", Class: "plugin", Name: "a/b", Actions: []string{"pull"}}},
		{in: "repository:a:pull,pull,push", want: Scope{Type: "repository", Name: "a", Actions: []string{"pull", "push"}}},
		{in: "", wantErr: true},
		{in: "repository", wantErr: true},
		{in: "repository:a", wantErr: true},
		{in: "repository:a:", wantErr: true},
		{in: ":a:pull", wantErr: true},
		{in: "repository::pull", wantErr: true},
		{in: "repository:a:pu ll", wantErr: true},
		{in: "repository:a:pull,,push", wantErr: true},
		{in: "repo(:a:pull", wantErr: true},
		{in: `repository:a"b:pull`, wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseScope(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseScope(%q) err = %v, wantErr %v", tt.in, err, tt.wantErr)
			continue
		}
		if tt.wantErr {
			continue
		}
		if got.Type != tt.want.Type || got.Class != tt.want.Class || got.Name != tt.want.Name || !slices.Equal(got.Actions, tt.want.Actions) {
			t.Errorf("ParseScope(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

func TestParseScopesSpaceJoined(t *testing.T) {
	got, err := ParseScopes("repository:docker.io/library/debian:pull  repository:library/debian:pull")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Name != "docker.io/library/debian" || got[1].Name != "library/debian" {
		t.Fatalf("got %+v", got)
	}
	if s := FormatScopes(got); s != "repository:docker.io/library/debian:pull repository:library/debian:pull" {
		t.Fatalf("FormatScopes = %q", s)
	}
}

func FuzzParseScope(f *testing.F) {
	for _, s := range []string{"repository:a/b:pull,push", "registry:catalog:*", "repository(x):h:5000/a:pull", "a:b:c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sc, err := ParseScope(s)
		if err != nil {
			return
		}
		again, err := ParseScope(sc.String())
		if err != nil {
			t.Fatalf("String() of %q does not parse: %v", s, err)
		}
		if again.String() != sc.String() {
			t.Fatalf("round trip %q -> %q", sc.String(), again.String())
		}
	})
}
