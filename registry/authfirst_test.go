package registry

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/caddy-oci/caddy-oci/authscope"
)

// Requests of a caller who may not make them are refused before the
// handler reads their body or looks at what the repository holds: the
// refusal comes at once, with the body withheld, and is the same whether
// the tag, repository or upload exists or not.

// withheldBody sends method path with headers that announce a body of
// declared bytes, sends none, and returns the response, which must come
// without the body. The connection is closed afterwards.
func withheldBody(t *testing.T, addr, method, path string, declared int, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var req bytes.Buffer
	fmt.Fprintf(&req, "%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n", method, path, addr, declared)
	for i := 0; i+1 < len(hdr); i += 2 {
		fmt.Fprintf(&req, "%s: %s\r\n", hdr[i], hdr[i+1])
	}
	req.WriteString("\r\n")
	if _, err := conn.Write(req.Bytes()); err != nil {
		t.Fatal(err)
	}
	// A server that waits for the body never answers: the deadline turns
	// that into a failure rather than a hung test.
	if err := conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("%s %s with the body withheld: no answer: %v", method, path, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("%s %s: reading the answer: %v", method, path, err)
	}
	return resp, body
}

// refusal is what a refused caller learns from an answer.
type refusal struct {
	status    int
	challenge string
	body      string
}

func refusalOf(resp *http.Response, body []byte) refusal {
	return refusal{resp.StatusCode, resp.Header.Get("WWW-Authenticate"), string(body)}
}

// TestAuthBeforeBody: anonymous and unprivileged callers pushing into a
// repository they may not write get their refusal at once, with the body
// withheld, and the same refusal for a tag, upload or repository that
// exists as for one that does not.
func TestAuthBeforeBody(t *testing.T) {
	hp := testHtpasswd(t, "ci", "ci-pw", "root", "root-pw")
	pol, err := authscope.NewPolicy(authscope.PolicyConfig{
		Repositories: map[string]authscope.RepositoryPolicy{
			"public/**": {Anonymous: []string{"read"}},
			"secret/**": {},
		},
		Groups: map[string][]string{"admins": {"root"}},
		Admin:  &authscope.AdminPolicy{Groups: []string{"admins"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ar := newAuthRegistry(t, authscope.Options{Htpasswd: hp, Policy: pol, BasicRealm: "test"}, "")
	root := remote.WithAuth(&authn.Basic{Username: "root", Password: "root-pw"})
	img, _ := random.Image(256, 1)
	if err := remote.Write(ar.ref(t, "secret/app:v1"), img, root); err != nil {
		t.Fatalf("admin push: %v", err)
	}
	if err := remote.Write(ar.ref(t, "public/app:v1"), img, root); err != nil {
		t.Fatalf("admin push: %v", err)
	}
	open, err := ar.store.NewUpload(t.Context(), "secret/app")
	if err != nil {
		t.Fatal(err)
	}
	digest := "sha256:" + fmt.Sprintf("%064x", 1)

	ciAuth := []string{"Authorization", "Basic " + basicCredentials("ci", "ci-pw")}
	callers := map[string][]string{"anonymous": nil, "ci (no rights)": ciAuth}
	// Each case is a pair of paths that differ only in whether what they
	// name exists.
	cases := []struct {
		name, method   string
		exists, absent string
		hdr            []string
	}{
		{"manifest put, tag", http.MethodPut, "/v2/secret/app/manifests/v1", "/v2/secret/app/manifests/v2",
			[]string{"Content-Type", "application/vnd.oci.image.manifest.v1+json"}},
		{"manifest put, ?tag=", http.MethodPut, "/v2/secret/app/manifests/" + digest + "?tag=v1", "/v2/secret/app/manifests/" + digest + "?tag=v2",
			[]string{"Content-Type", "application/vnd.oci.image.manifest.v1+json"}},
		{"manifest put, repository", http.MethodPut, "/v2/secret/app/manifests/v1", "/v2/secret/none/manifests/v1", nil},
		{"manifest put, readable repository", http.MethodPut, "/v2/public/app/manifests/v1", "/v2/public/none/manifests/v1", nil},
		{"upload chunk", http.MethodPatch, "/v2/secret/app/blobs/uploads/" + open.ID, "/v2/secret/app/blobs/uploads/" + fmt.Sprintf("%032x", 7), nil},
		{"upload finish", http.MethodPut, "/v2/secret/app/blobs/uploads/" + open.ID + "?digest=" + digest, "/v2/secret/app/blobs/uploads/" + fmt.Sprintf("%032x", 7) + "?digest=" + digest, nil},
		{"monolithic upload", http.MethodPost, "/v2/secret/app/blobs/uploads/?digest=" + digest, "/v2/secret/none/blobs/uploads/?digest=" + digest, nil},
	}
	for who, auth := range callers {
		for _, c := range cases {
			t.Run(who+"/"+c.name, func(t *testing.T) {
				hdr := append(append([]string{}, c.hdr...), auth...)
				got := refusalOf(withheldBody(t, ar.host, c.method, c.exists, 4096, hdr...))
				if got.status != http.StatusUnauthorized && got.status != http.StatusForbidden {
					t.Fatalf("%s %s: %d %s, want a refusal", c.method, c.exists, got.status, got.body)
				}
				other := refusalOf(withheldBody(t, ar.host, c.method, c.absent, 4096, hdr...))
				// The challenge and the denial name the repository, which the
				// caller typed.
				if c.name == "manifest put, repository" || c.name == "manifest put, readable repository" || c.name == "monolithic upload" {
					other.challenge, got.challenge = "", ""
					got.body = strings.ReplaceAll(got.body, repoOfPath(c.exists), repoOfPath(c.absent))
				}
				if got.status != other.status || got.challenge != other.challenge || got.body != other.body {
					t.Errorf("the refusal tells what exists:\n exists %+v\n absent %+v", got, other)
				}
			})
		}
	}
	if u, err := ar.store.GetUpload(t.Context(), "secret/app", open.ID); err != nil || u.Size != 0 {
		t.Errorf("refused chunks reached the upload: %+v %v", u, err)
	}
}

func basicCredentials(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
}

// repoOfPath is the repository of an API path /v2/<repo>/(manifests|blobs)/...
func repoOfPath(p string) string {
	p = strings.TrimPrefix(p, "/v2/")
	for _, sep := range []string{"/manifests/", "/blobs/"} {
		if i := strings.Index(p, sep); i >= 0 {
			return p[:i]
		}
	}
	return p
}
