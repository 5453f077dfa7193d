package authscope

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// CheckServiceURL checks a URL the configuration names for a service (a
// token realm, an OIDC or workload issuer): http or https with a host,
// and no user:password@, which would go to every client in challenges, or
// with every request to the service, anonymous ones included. The error
// never repeats a password.
func CheckServiceURL(s string) error {
	u, err := url.Parse(s)
	switch {
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		return fmt.Errorf("%q is not an http(s) URL", RedactURL(s))
	case u.User != nil:
		return fmt.Errorf("%s: credentials do not belong in the URL", u.Redacted())
	}
	return nil
}

// RedactURL is s for messages: without a password, whether or not s
// parses as a URL.
func RedactURL(s string) string {
	if u, err := url.Parse(s); err == nil {
		return u.Redacted()
	}
	if i := strings.LastIndex(s, "@"); i >= 0 {
		return "…" + s[i:]
	}
	return s
}

// ProxyRealm is the realm of a challenge that sends clients to the token
// proxy on the host r reached (TokenPath), carrying v's ns and path prefix
// so that the proxy maps the client's scopes as the challenged request's
// names were mapped. The registry's own challenges and those the front
// rewrites both use it, so a token request reaches either with the same
// query.
//
// scheme ("http", "https" or empty) overrides the scheme, which otherwise
// follows r's TLS state: behind a TLS-terminating load balancer requests
// arrive as plain HTTP while clients must be sent to https. The host
// stays r's Host, so host aliases keep working at the proxy.
func ProxyRealm(r *http.Request, scheme string, v Via) string {
	switch {
	case scheme != "":
	case r.TLS != nil:
		scheme = "https"
	default:
		scheme = "http"
	}
	u := url.URL{Scheme: scheme, Host: r.Host, Path: TokenPath}
	q := url.Values{}
	if v.NS != "" {
		q.Set(realmParamNS, v.NS)
	}
	if v.PathPrefix != "" {
		q.Set(realmParamPrefix, v.PathPrefix)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// InertContent marks an answer whose bytes a pusher, a backend or a token
// service chose, served on this site's origin (beside its sign-in pages
// and their session): a browser sent to it must neither sniff it into a
// page nor run anything in it as the site. Registry clients read neither
// header.
func InertContent(h http.Header) {
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; sandbox")
}
