package authscope

import (
	"errors"
	"net/url"
	"slices"
	"strings"
	"testing"
)

// FuzzUpstreamValues: whatever query or form a client sends, the token
// service gets the configured service and realm parameters only, never
// the proxy's own ns and prefix, the client's other parameters as sent,
// scopes whose repository names are the translated ones, and no key
// that spells one of those in another case.
func FuzzUpstreamValues(f *testing.F) {
	for _, seed := range []string{
		"service=registry.example&scope=repository:library/debian:pull",
		"scope=repository:debian:pull&service=evil&service=registry.example&tenant=x",
		"scope=repository:library/debian:pull+repository:team/app:pull,push&ns=docker.io",
		"scope=repository:debian:pull&prefix=registry-1.docker.io",
		"scope=repository:x:pull&ns=evil.example",
		"scope=repository:../etc:pull",
		"scope=registry:catalog:*&scope=repository(plugin):a/b:pull",
		"grant_type=password&username=ci&password=pw&client_id=c&scope=repository:Debian:pull",
		"scope=repository:debian:pull&scope=repository:a//b:pull",
		"service=&Service=evil&tenant=&tenant=acme&SCOPE=repository:x:pull",
		"scope=repository:localhost:5000/app:pull",
		"scope=Repository:library/debian:pull",
		"scope=%20%20repository:debian:pull%09",
		"ns=docker.io&ns=quay.io&scope=repository:debian:pull",
		"scope[]=repository:debian:pull&account=a&account=b&debug=1",
		"scope=repository:" + strings.Repeat("a/", 200) + "b:pull",
	} {
		f.Add(seed, "docker.mirror.example")
	}
	f.Add("scope=repository:app:pull", "quay.mirror.example:8443")
	f.Fuzz(func(t *testing.T, raw, host string) {
		names := testNames(t)
		client, _ := url.ParseQuery(raw)
		via := Via{Host: host, NS: client.Get(realmParamNS), PathPrefix: client.Get(realmParamPrefix)}
		u, _ := url.Parse("https://auth.example/token?tenant=acme")
		p := &TokenProxy{Upstream: u, Service: "registry.example", Names: names}
		out, err := p.UpstreamValues(client, via)
		if err != nil {
			if !errors.Is(err, ErrScopeRejected) && !errors.Is(err, ErrParameterCase) {
				t.Fatalf("error %v wraps neither ErrScopeRejected nor ErrParameterCase", err)
			}
			return
		}
		for k, vs := range out {
			if k != "tenant" && !slices.Contains(tokenParams, k) {
				t.Fatalf("%q, no token request parameter, reaches the token service", k)
			}
			if k != "scope" && len(vs) > 1 {
				t.Fatalf("%q reaches the token service %d times", k, len(vs))
			}
			for _, c := range []string{"scope", "service", "tenant", realmParamNS, realmParamPrefix} {
				if k != c && strings.EqualFold(k, c) {
					t.Fatalf("%q, another case of %q, reaches the token service", k, c)
				}
			}
		}
		if !slices.Equal(out["service"], []string{"registry.example"}) || !slices.Equal(out["tenant"], []string{"acme"}) {
			t.Fatalf("service %q tenant %q reach the token service", out["service"], out["tenant"])
		}
		if out.Has(realmParamNS) || out.Has(realmParamPrefix) {
			t.Fatalf("the proxy's own parameters reach the token service: %v", out)
		}
		for k, vs := range client {
			switch k {
			case "service", "tenant", realmParamNS, realmParamPrefix, "scope":
				continue
			}
			if slices.Contains(tokenParams, k) && !slices.Equal(out[k], vs) {
				t.Fatalf("parameter %q: %q became %q", k, vs, out[k])
			}
		}
		if len(out["scope"]) != len(client["scope"]) {
			t.Fatalf("%d scope values became %d", len(client["scope"]), len(out["scope"]))
		}
		for i, v := range out["scope"] {
			in, got := strings.Fields(client["scope"][i]), strings.Fields(v)
			if len(in) != len(got) {
				t.Fatalf("scope %q became %q", client["scope"][i], v)
			}
			for j := range got {
				s, err := ParseScope(got[j])
				if err != nil {
					t.Fatalf("forwarded scope %q does not parse: %v", got[j], err)
				}
				if !strings.EqualFold(s.Type, "repository") {
					continue
				}
				orig, err := ParseScope(in[j])
				if err != nil {
					t.Fatalf("%q was forwarded but does not parse", in[j])
				}
				want, err := names.Internal(orig.Name, via)
				if err != nil || s.Name != want || !ValidName(s.Name) {
					t.Fatalf("scope %q forwarded as %q, want the internal name %q (%v)", in[j], got[j], want, err)
				}
			}
		}
	})
}
