package authscope

import (
	"net/http"
	"net/url"
)

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
