package front

import (
	"bytes"
	"net/http"
	"strings"
	"testing"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/cache"
)

// TestLocationKeepsNS: a client that came in with ?ns= (containerd's
// _default/hosts.toml, regctl) follows the upload Location as it is. Without
// the ns the name there means another repository when the namespace is
// no default (library/tool, local, instead of docker.io/library/tool): the
// session would go on, or fail, under a name the client never meant.
func TestLocationKeepsNS(t *testing.T) {
	rg := newRig(t, nil, func(c *Config) {
		c.Namespaces = []authscope.Namespace{{Prefix: "docker.io", Hosts: []string{mirrorHost}}}
	})
	tok := rg.token(t, "ci", "repository:docker.io/library/tool:pull,push")
	auth := []string{"Authorization", "Bearer " + tok}
	resp, body := rg.do(t, "POST", "/v2/library/tool/blobs/uploads/?ns=docker.io", auth...)
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusAccepted || !strings.Contains(loc, "ns=docker.io") {
		t.Fatalf("POST with ns: %d, Location %q (%s); want one that keeps ns=docker.io", resp.StatusCode, loc, body)
	}
	blob := []byte("hello ns")
	dg := cache.FromBytes(cache.SHA256, blob).String()
	req, _ := http.NewRequest("PUT", rg.front.URL+loc+"&digest="+dg, bytes.NewReader(blob))
	req.Header.Set("Authorization", "Bearer "+tok)
	put, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	put.Body.Close()
	if put.StatusCode != http.StatusCreated {
		t.Fatalf("PUT at the Location: %d", put.StatusCode)
	}
	head, _ := rg.do(t, "HEAD", "/v2/library/tool/blobs/"+dg+"?ns=docker.io", auth...)
	if head.StatusCode != http.StatusOK {
		t.Errorf("the blob under docker.io/library/tool: %d", head.StatusCode)
	}
}
