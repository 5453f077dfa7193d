package authscope

import "testing"

func TestParseChallenge(t *testing.T) {
	h := `Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull repository:c:pull,push",error="insufficient_scope"`
	c, err := ParseChallenge(h)
	if err != nil {
		t.Fatal(err)
	}
	if c.Scheme != "Bearer" {
		t.Fatalf("scheme %q", c.Scheme)
	}
	for k, want := range map[string]string{
		"realm":   "https://auth.example/token",
		"service": "registry.example",
		"scope":   "repository:a/b:pull repository:c:pull,push",
		"error":   "insufficient_scope",
		"REALM":   "https://auth.example/token",
	} {
		if got, ok := c.Get(k); !ok || got != want {
			t.Errorf("Get(%q) = %q, %v; want %q", k, got, ok, want)
		}
	}
	if c.String() != h {
		t.Errorf("String() = %q\nwant       %q", c.String(), h)
	}
}

func TestParseChallengeForms(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr bool
	}{
		{in: `Basic realm="Registry"`, want: `Basic realm="Registry"`},
		{in: `Bearer realm=https://x/t, service=s`, want: `Bearer realm="https://x/t",service="s"`},
		{in: `Bearer realm="a\"b,c"`, want: `Bearer realm="a\"b,c"`},
		{in: `Bearer`, want: `Bearer`},
		{in: `Bearer realm="x`, wantErr: true},
		{in: `Bearer =x`, wantErr: true},
		{in: ``, wantErr: true},
		{in: `Be"arer realm=x`, wantErr: true},
	}
	for _, tt := range tests {
		c, err := ParseChallenge(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseChallenge(%q) err = %v", tt.in, err)
			continue
		}
		if err == nil && c.String() != tt.want {
			t.Errorf("ParseChallenge(%q).String() = %q, want %q", tt.in, c.String(), tt.want)
		}
	}
}

func TestChallengeSetDel(t *testing.T) {
	c, _ := ParseChallenge(`Bearer realm="r",service="s",scope="x:y:pull"`)
	c.Set("realm", "https://mirror/_oci/token")
	c.Del("scope")
	c.Set("error", "invalid_token")
	if got := c.String(); got != `Bearer realm="https://mirror/_oci/token",service="s",error="invalid_token"` {
		t.Fatalf("got %q", got)
	}
}

func FuzzParseChallenge(f *testing.F) {
	f.Add(`Bearer realm="https://a/t",service="s",scope="repository:a:pull"`)
	f.Add(`Basic realm=x`)
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseChallenge(s)
		if err != nil {
			return
		}
		again, err := ParseChallenge(c.String())
		if err != nil {
			t.Fatalf("String() of %q does not parse: %v (%q)", s, err, c.String())
		}
		if again.String() != c.String() {
			t.Fatalf("round trip %q -> %q", c.String(), again.String())
		}
	})
}

func TestChallengeViewRewrite(t *testing.T) {
	typed := map[string]string{"docker.io/library/debian": "debian", "team/app": "team/app"}
	v := ChallengeView{Realm: "https://front/_oci/token?ns=docker.io", Name: func(b string) (string, bool) {
		s, ok := typed[b]
		return s, ok
	}}
	for in, want := range map[string]string{
		`Bearer realm="https://auth/token",service="reg"`:                                                            `Bearer realm="https://front/_oci/token?ns=docker.io",service="reg"`,
		`Bearer realm="https://auth/token",service="reg",scope="repository:docker.io/library/debian:pull"`:           `Bearer realm="https://front/_oci/token?ns=docker.io",service="reg",scope="repository:debian:pull"`,
		`Bearer realm="x",scope="repository:team/app:pull,push repository:docker.io/library/debian:pull"`:            `Bearer realm="https://front/_oci/token?ns=docker.io",scope="repository:team/app:pull,push repository:debian:pull"`,
		`Bearer realm="x",scope="repository:docker.io/secret/x:pull",error="insufficient_scope"`:                     `Bearer realm="https://front/_oci/token?ns=docker.io",error="insufficient_scope"`,
		`Bearer realm="x",scope="registry:catalog:* repository:docker.io/library/debian:pull",error="invalid_token"`: `Bearer realm="https://front/_oci/token?ns=docker.io",scope="registry:catalog:* repository:debian:pull",error="invalid_token"`,
		`Basic realm="registry"`: `Basic realm="registry"`,
	} {
		got, err := v.Rewrite(in)
		if err != nil || got != want {
			t.Errorf("Rewrite(%s)\n got %s (%v)\nwant %s", in, got, err, want)
		}
	}
	v.Service = "front"
	got, _ := v.Rewrite(`Bearer realm="x",service="reg"`)
	if want := `Bearer realm="https://front/_oci/token?ns=docker.io",service="front"`; got != want {
		t.Errorf("service: got %s, want %s", got, want)
	}
	if _, err := v.Rewrite(`Bearer realm="unterminated`); err == nil {
		t.Error("a malformed challenge passed")
	}
}
