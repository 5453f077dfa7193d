package front

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/caddy-oci/caddy-oci/authscope"
)

// TestPassThroughDropsInternalURLs: outside the API, the front passes a
// backend's answer on as it came, but a Location, Content-Location or Link
// that names an address of the backend's own network (a loopback,
// private or link-local address, a single-label host such as a compose
// service, a .internal, .svc or .cluster.local name) is dropped: it
// would point the client at, and tell it of, an address it cannot or
// must not reach. Spellings a browser reads as another host
// (backslashes, tabs) count as that host. Before, every one of them
// reached the client unchanged (measured on the binary with
// http://10.1.2.3:5000/... and http://backend-core:8080/...).
func TestPassThroughDropsInternalURLs(t *testing.T) {
	backend := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		to := r.URL.Query().Get("to")
		w.Header().Set("Location", to)
		w.Header().Set("Content-Location", to)
		w.Header().Set("Link", "<"+to+`>; rel="next"`)
		w.WriteHeader(http.StatusFound)
	})
	f, err := New(Config{Namespaces: []authscope.Namespace{{Prefix: "docker.io", Default: true}}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f.Middleware(backend))
	t.Cleanup(srv.Close)
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(path, to string) http.Header {
		t.Helper()
		resp, err := client.Get(srv.URL + path + "?to=" + url.QueryEscape(to))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.Header
	}
	for _, path := range []string{"/ui/login", "/v2/_zot/ext/search"} {
		for _, to := range []string{
			"http://10.1.2.3:5000/internal",
			"http://backend-core:8080/x",
			"http://localhost/x",
			"//127.0.0.1/x",
			"http://[fd00::1]/x",
			"http://[::ffff:192.168.1.2]/x",
			"http://169.254.169.254/latest/meta-data/",
			"http://0.0.0.0:5000/x",
			"http://harbor-core.harbor.svc.cluster.local/x",
			"http://registry.internal/x",
			"http://REGISTRY.INTERNAL./x",
			`http:\\10.1.2.3\x`,
			`/\10.1.2.3/x`,
			"http://10.1.2\t.3/x",
			"http://127.1:5000/x",
			"http://0x7f.0.0.1/x",
			"http://2130706433/x",
			"http://0177.0.0.01/x",
			"http://10.0x10203/x",
		} {
			h := get(path, to)
			for _, k := range []string{"Location", "Content-Location", "Link"} {
				if v := h.Get(k); v != "" {
					t.Errorf("%s to %q: %s %q reached the client", path, to, k, v)
				}
			}
		}
		for _, to := range []string{
			"https://idp.example.com/auth?x=1",
			"/c/login",
			srv.URL + "/ui/home",
		} {
			if got := get(path, to).Get("Location"); got != to {
				t.Errorf("%s: Location %q became %q", path, to, got)
			}
		}
	}
}

// TestBrowserIPv4 reads hosts as browsers read them.
func TestBrowserIPv4(t *testing.T) {
	for host, want := range map[string]string{
		"127.1": "127.0.0.1", "0x7f.0.0.1": "127.0.0.1", "2130706433": "127.0.0.1", "0177.0.0.01": "127.0.0.1",
		"10.0x10203": "10.1.2.3", "192.168.0x1.1": "192.168.1.1", "8.8.8.8": "8.8.8.8", "1.2.3.256": "", "0x": "0.0.0.0",
	} {
		a, isIP := browserIPv4(host)
		if !isIP || (want == "") != !a.IsValid() || (want != "" && a.String() != want) {
			t.Errorf("%s: %v %v, want %q", host, a, isIP, want)
		}
	}
	for _, host := range []string{"registry.example", "v2.example", "1.example", "example.0z"} {
		if _, isIP := browserIPv4(host); isIP {
			t.Errorf("%s read as an address", host)
		}
	}
}
