package zotadapter

// The acceptance tests: Caddy runs the adapted config in-process, and
// clients check over real HTTP that it does what the zot config says.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"maps"
	"math/big"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	ggcr "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"golang.org/x/crypto/bcrypt"

	"github.com/caddy-oci/caddy-oci/authscope/oidctest"
	"github.com/caddy-oci/caddy-oci/caddymodule"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func writeHtpasswd(t *testing.T, dir string, users map[string]string) {
	t.Helper()
	var b strings.Builder
	for u, pw := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(u + ":" + string(h) + "\n")
	}
	writeFile(t, dir, "htpasswd", b.String())
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port
}

// serve runs an adapted config in this process, with the admin API off
// so that tests do not fight over its port.
func serve(t *testing.T, a adapted) {
	t.Helper()
	a.cfg.Admin = &caddy.AdminConfig{Disabled: true}
	cfg, err := json.Marshal(a.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("caddy.Load: %v\n%s", err, cfg)
	}
	t.Cleanup(func() { stopCaddy(t) })
}

// upstream is go-containerregistry's registry on loopback.
func upstream(t *testing.T) string {
	t.Helper()
	s := httptest.NewServer(ggcr.New(ggcr.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(s.Close)
	return s.URL
}

func ref(t *testing.T, host, repoTag string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(host+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func push(t *testing.T, host, repoTag string, auth authn.Authenticator) (v1.Image, error) {
	t.Helper()
	img, err := random.Image(512, 2)
	if err != nil {
		t.Fatal(err)
	}
	return img, remote.Write(ref(t, host, repoTag), img, remote.WithAuth(auth))
}

func digestOf(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// status is the HTTP status of a go-containerregistry error, 0 for none.
func status(err error) int {
	var te *transport.Error
	if errors.As(err, &te) {
		return te.StatusCode
	}
	return 0
}

// TestHomelabServes is the three-tier homelab from zot: anonymous read,
// a CI user who pushes new tags, admins who may do everything, a mirror
// of another registry, metrics for root, and the audit log in its file.
func TestHomelabServes(t *testing.T) {
	up := upstream(t)
	upHost := strings.TrimPrefix(up, "http://")
	tool, err := push(t, upHost, "team/tool:1", authn.Anonymous)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writeHtpasswd(t, dir, map[string]string{"ci": "ci-pw", "root": "root-pw"})
	port := freePort(t)
	serve(t, adaptFixture(t, "homelab.json", map[string]string{"@DIR@": dir, "@PORT@": port, "@UPSTREAM@": up}))
	host := "127.0.0.1:" + port
	ci := &authn.Basic{Username: "ci", Password: "ci-pw"}
	root := &authn.Basic{Username: "root", Password: "root-pw"}

	if _, err := push(t, host, "apps/web:1", authn.Anonymous); status(err) != http.StatusUnauthorized {
		t.Fatalf("anonymous push: %v, want 401", err)
	}
	if _, err := push(t, host, "apps/web:1", &authn.Basic{Username: "ci", Password: "wrong"}); status(err) != http.StatusUnauthorized {
		t.Fatalf("push with a wrong password: %v, want 401", err)
	}
	web, err := push(t, host, "apps/web:1", ci)
	if err != nil {
		t.Fatalf("CI push: %v", err)
	}
	got, err := remote.Image(ref(t, host, "apps/web:1"))
	if err != nil || digestOf(t, got) != digestOf(t, web) {
		t.Fatalf("anonymous pull: %v", err)
	}
	// create, not update: CI may not move a tag, nor delete.
	if _, err := push(t, host, "apps/web:1", ci); status(err) != http.StatusForbidden {
		t.Fatalf("CI moving a tag: %v, want 403", err)
	}
	byDigest, _ := name.NewDigest(host+"/apps/web@"+digestOf(t, web).String(), name.Insecure)
	if err := remote.Delete(byDigest, remote.WithAuth(ci)); status(err) != http.StatusForbidden {
		t.Fatalf("CI delete: %v, want 403", err)
	}
	if _, err := push(t, host, "apps/web:1", root); err != nil {
		t.Fatalf("admin moving a tag: %v", err)
	}
	if err := remote.Delete(byDigest, remote.WithAuth(root)); err != nil {
		t.Fatalf("admin delete: %v", err)
	}
	if _, err := remote.Image(byDigest); status(err) != http.StatusNotFound {
		t.Fatalf("deleted manifest: %v, want 404", err)
	}

	// The mirror: zot's content {prefix **, destination /hub}.
	mirrored, err := remote.Image(ref(t, host, "hub/team/tool:1"))
	if err != nil || digestOf(t, mirrored) != digestOf(t, tool) {
		t.Fatalf("pull through the mirror: %v", err)
	}
	if _, err := push(t, host, "hub/team/tool:2", root); err == nil {
		t.Fatal("push into the mirror accepted")
	}

	// Metrics: root only, as accessControl.metrics says.
	get := func(user, pw string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+host+"/metrics", nil)
		if user != "" {
			req.SetBasicAuth(user, pw)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("", ""); code != http.StatusUnauthorized {
		t.Errorf("anonymous /metrics: %d", code)
	}
	if code, _ := get("ci", "ci-pw"); code != http.StatusForbidden {
		t.Errorf("ci /metrics: %d", code)
	}
	if code, body := get("root", "root-pw"); code != http.StatusOK || !strings.Contains(body, "caddy_oci_requests_total") {
		t.Errorf("root /metrics: %d", code)
	}
	// Spellings the route's path matcher takes meet the guard too.
	for _, p := range []string{"/METRICS", "//metrics", "/metrics/./"} {
		resp, err := http.Get("http://" + host + p)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(b), "caddy_oci_requests_total") {
			t.Errorf("anonymous %s: %d with the metrics", p, resp.StatusCode)
		}
	}
	// Made-up passwords for /metrics are guesses like any other: past
	// login_limit's bound for the client they are refused unchecked.
	// Caddy's basic_auth, which the adapter put there before, checked
	// each one (bcrypt at htpasswd's cost: on the binary, 40 anonymous
	// requests took 42 CPU-seconds and held a CI login 25 s), and
	// answered all 401.
	var wg sync.WaitGroup
	codes := make([]int, 20)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i], _ = get("root", fmt.Sprintf("guess-%d", i))
		}()
	}
	wg.Wait()
	if !slices.Contains(codes, http.StatusTooManyRequests) {
		t.Errorf("20 wrong passwords for /metrics at once: %v, want 429s past login_limit", codes)
	}

	// log.audit: pushes and denials went to the audit file, not the main log.
	audit, err := os.ReadFile(filepath.Join(dir, "zot-audit.log"))
	if err != nil || !bytes.Contains(audit, []byte(`"ci"`)) {
		t.Errorf("audit log: %v %s", err, audit)
	}
	if main, err := os.ReadFile(filepath.Join(dir, "zot.log")); err != nil || bytes.Contains(main, []byte(`"logger":"audit"`)) {
		t.Errorf("main log: %v, or it holds audit events", err)
	}
}

// TestGlobPolicyServes: zot reads patterns as doublestar globs, so
// `{prod,release}/**` keeps both namespaces to ci and `dev/[!s]*/**` is
// every dev/ name but sandboxes. Read as plain text the first matched no
// repository and the second the opposite ones: prod/app fell to `**`,
// where every signed-in user may push, and the default mirror took prod
// and release from the pushers they belong to.
func TestGlobPolicyServes(t *testing.T) {
	up := upstream(t)
	dir := t.TempDir()
	writeHtpasswd(t, dir, map[string]string{"ci": "ci-pw", "bob": "bob-pw"})
	port := freePort(t)
	serve(t, adaptString(t, `{
  "storage": {"rootDirectory": "`+dir+`/zot"},
  "http": {
    "address": "127.0.0.1", "port": "`+port+`",
    "auth": {"htpasswd": {"path": "`+dir+`/htpasswd"}},
    "accessControl": {"repositories": {
      "**": {"defaultPolicy": ["read", "create"]},
      "{prod,release}/**": {"defaultPolicy": ["read"], "policies": [{"users": ["ci"], "actions": ["read", "create"]}]},
      "dev/[!s]*/**": {"defaultPolicy": ["read"]}
    }}
  },
  "extensions": {"sync": {"enable": true, "registries": [
    {"urls": ["`+up+`"], "onDemand": true, "tlsVerify": false, "content": [{"prefix": "**"}]}
  ]}}
}`))
	host := "127.0.0.1:" + port
	ci := &authn.Basic{Username: "ci", Password: "ci-pw"}
	bob := &authn.Basic{Username: "bob", Password: "bob-pw"}
	for _, tc := range []struct {
		who  *authn.Basic
		repo string
		want int
	}{
		{bob, "prod/app:1", http.StatusForbidden},
		{bob, "release/app:1", http.StatusForbidden},
		{bob, "dev/tools/app:1", http.StatusForbidden},
		{ci, "prod/app:1", 0},
		{ci, "release/app:1", 0},
		{bob, "dev/sandbox/app:1", 0},
	} {
		if _, err := push(t, host, tc.repo, tc.who); status(err) != tc.want || (tc.want == 0 && err != nil) {
			t.Errorf("%s pushing %s: %v, want %d", tc.who.Username, tc.repo, err, tc.want)
		}
	}
}

// TestSyncContentFilterServes: zot's sync reaches only the upstream
// repositories its content prefix names, with the registry's upstream
// credentials; pulls of other names find nothing. The adapted mirror
// served the whole upstream under its prefix, the private repositories
// those credentials may read included.
func TestSyncContentFilterServes(t *testing.T) {
	up := upstream(t)
	upHost := strings.TrimPrefix(up, "http://")
	for _, repo := range []string{"team/public/app:1", "team/private/app:1", "lib/tool:1"} {
		if _, err := push(t, upHost, repo, authn.Anonymous); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	port := freePort(t)
	serve(t, adaptString(t, `{
  "storage": {"rootDirectory": "`+dir+`/zot"},
  "http": {"address": "127.0.0.1", "port": "`+port+`"},
  "extensions": {"sync": {"enable": true, "registries": [
    {"urls": ["`+up+`"], "onDemand": true, "tlsVerify": false, "content": [
      {"prefix": "/team/public/**", "destination": "/pub"},
      {"prefix": "/lib/*", "destination": "/l", "stripPrefix": true}
    ]}
  ]}}
}`))
	host := "127.0.0.1:" + port
	for _, tc := range []struct {
		repo string
		want int
	}{
		{"pub/team/public/app:1", 0},
		{"pub/team/private/app:1", http.StatusNotFound},
		{"pub/lib/tool:1", http.StatusNotFound},
		{"l/tool:1", 0},
		{"l/team/private/app:1", http.StatusNotFound},
	} {
		_, err := remote.Image(ref(t, host, tc.repo))
		if status(err) != tc.want || (tc.want == 0 && err != nil) {
			t.Errorf("pull %s: %v, want %d", tc.repo, err, tc.want)
		}
	}
}

// TestSyncServes: zot's sync of several registries. On-demand content is
// pulled through its mirror: lib/alpine and vendor/tool rely on
// upstream_prefix (lib/alpine -> upstream library/alpine, vendor/tool ->
// upstream vendor/tool). The registry zot
// only polls (pollInterval 6h, onDemand false) copies team/** into
// mirror/ when its sync runs, and only the tags its regex keeps; before,
// nothing is there, as in zot. The polled content that had to become a
// mirror (vendor/**, tags semver) syncs the version tags into it.
func TestSyncServes(t *testing.T) {
	up1, up2 := upstream(t), upstream(t)
	h1, h2 := strings.TrimPrefix(up1, "http://"), strings.TrimPrefix(up2, "http://")
	want := map[string]v1.Image{}
	for local, upstreamName := range map[string]string{
		"lib/alpine:3":         h1 + "/library/alpine:3", // /library/* stripped into /lib
		"vendor/tool:1":        h1 + "/vendor/tool:1",    // /vendor/** at its own name
		"other/img:1":          h2 + "/other/img:1",      // no content: the default mirror
		"mirror/team/a:1.2":    h1 + "/team/a:1.2",       // polled into /mirror, tag ^1\.
		"mirror/team/a:latest": h1 + "/team/a:latest",
		"vendor/tool:latest":   h1 + "/vendor/tool:latest",
	} {
		host, repo, _ := strings.Cut(upstreamName, "/")
		img, err := push(t, host, repo, authn.Anonymous)
		if err != nil {
			t.Fatal(err)
		}
		want[local] = img
	}
	dir := t.TempDir()
	writeFile(t, dir, "sync-credentials.json", `{}`)
	port := freePort(t)
	serve(t, adaptFixture(t, "sync.json", map[string]string{"@DIR@": dir, "@PORT@": port, "@UPSTREAM@": up1, "@UPSTREAM2@": up2}))
	host := "127.0.0.1:" + port
	pull := func(local string) error {
		t.Helper()
		got, err := remote.Image(ref(t, host, local))
		if err != nil {
			return err
		}
		if digestOf(t, got) != digestOf(t, want[local]) {
			t.Errorf("pull %s: another image", local)
		}
		return nil
	}
	for _, local := range []string{"lib/alpine:3", "vendor/tool:1", "other/img:1"} {
		if err := pull(local); err != nil {
			t.Errorf("pull %s on demand: %v", local, err)
		}
	}
	// Not synced yet: zot with onDemand false has nothing either.
	if err := pull("mirror/team/a:1.2"); status(err) != http.StatusNotFound {
		t.Fatalf("pull of a polled image before the sync ran: %v, want 404", err)
	}

	// Run the syncs now instead of in 6h, and wait for them to end.
	base := "http://" + host + "/_oci/sync"
	resp, err := http.Post(base, "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /_oci/sync: %d", resp.StatusCode)
	}
	var st struct {
		Syncs []struct {
			Name    string
			LastEnd *time.Time `json:"last_end"`
			LastRun *struct {
				Tags   int
				Errors []string
			} `json:"last_run"`
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for done := false; !done; {
		resp, err := http.Get(base)
		if err != nil {
			t.Fatal(err)
		}
		st.Syncs = nil
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		done = len(st.Syncs) == 3
		for _, s := range st.Syncs {
			done = done && s.LastEnd != nil
		}
		if !done && time.Now().After(deadline) {
			t.Fatalf("the syncs did not end: %+v", st.Syncs)
		}
		if !done {
			time.Sleep(50 * time.Millisecond)
		}
	}
	tags := map[string]int{}
	for _, s := range st.Syncs {
		tags[s.Name] = s.LastRun.Tags
		if len(s.LastRun.Errors) > 0 {
			t.Errorf("sync %s: %v", s.Name, s.LastRun.Errors)
		}
	}
	// team/a:1.2 passes ^1\. and latest does not; vendor/tool:1 is a
	// version and latest is not; library/alpine:3 has no filter.
	if w := map[string]int{"mirror": 1, "vendor": 1, "lib": 1}; !maps.Equal(tags, w) {
		t.Errorf("tags synced %v, want %v", tags, w)
	}
	if err := pull("mirror/team/a:1.2"); err != nil {
		t.Errorf("pull of a polled image after the sync: %v", err)
	}
	// A copy never reaches upstream on a pull: a tag the filter left
	// out is not there.
	if err := pull("mirror/team/a:latest"); status(err) != http.StatusNotFound {
		t.Errorf("pull of a tag the sync filtered out: %v, want 404", err)
	}
	// The copy's namespace is local, as zot's destination is: it takes
	// pushes. Names without a prefix belong to the default mirror: no
	// pushes, as the adapter warned.
	if _, err := push(t, host, "mirror/own:1", authn.Anonymous); err != nil {
		t.Errorf("push into the copy's namespace: %v", err)
	}
	if _, err := push(t, host, "mine/app:1", authn.Anonymous); err == nil {
		t.Error("push to a name of the default mirror accepted")
	}
}

// TestOpenIDServes: sign in at an OpenID provider as zot's config names
// it (credentials file, email as the user name, groups from the
// provider), make an API key, and push with it as a member of ci.
func TestOpenIDServes(t *testing.T) {
	p := oidctest.New(t, "alice", "ci")
	p.SetMutate(func(c map[string]any) { c["email"] = "alice@homelab.example" })
	dir := t.TempDir()
	writeHtpasswd(t, dir, map[string]string{"bob": "bob-pw"})
	writeFile(t, dir, "oidc-credentials.json", `{"clientid":"`+oidctest.ClientID+`","clientsecret":"`+oidctest.ClientSecret+`"}`)
	port := freePort(t)
	serve(t, adaptFixture(t, "openid.json", map[string]string{"@DIR@": dir, "@PORT@": port, "@ISSUER@": p.Issuer()}))
	base := "http://127.0.0.1:" + port

	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	resp, err := c.Get(base + "/_oci/auth/login")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "alice@homelab.example") {
		t.Fatalf("sign-in: %d %s", resp.StatusCode, body)
	}
	resp, err = c.Get(base + "/_oci/auth/session")
	if err != nil {
		t.Fatal(err)
	}
	var sess struct {
		CSRF string `json:"csrf_token"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&sess)
	resp.Body.Close()
	req, _ := http.NewRequest(http.MethodPost, base+"/_oci/auth/apikeys", strings.NewReader(`{"label":"ci"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-CSRF-Token", sess.CSRF)
	req.Header.Set("Origin", base)
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var created struct{ Key string }
	_ = json.NewDecoder(resp.Body).Decode(&created)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || created.Key == "" {
		t.Fatalf("API key: %d", resp.StatusCode)
	}

	host := "127.0.0.1:" + port
	key := &authn.Basic{Username: "alice", Password: created.Key}
	if _, err := push(t, host, "apps/api:1", key); err != nil {
		t.Fatalf("push with the key of a ci member: %v", err)
	}
	if _, err := remote.Image(ref(t, host, "apps/api:1")); err != nil {
		t.Fatalf("anonymous pull: %v", err)
	}
	// bob (htpasswd) is signed in but in no group: defaultPolicy read only.
	if _, err := push(t, host, "apps/api:2", &authn.Basic{Username: "bob", Password: "bob-pw"}); status(err) != http.StatusForbidden {
		t.Fatalf("push by bob: %v, want 403", err)
	}
}

// testPKI writes a CA (ca.crt), a server certificate for 127.0.0.1
// (server.cert, server.key) into dir, and returns the CA's pool and a
// client certificate whose common name is "leaf".
func testPKI(t *testing.T, dir string) (*x509.CertPool, tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	issue := func(serial int64, usage x509.ExtKeyUsage) (certPEM, keyPEM []byte) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "leaf"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kb, _ := x509.MarshalECPrivateKey(k)
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
	}
	srvCert, srvKey := issue(2, x509.ExtKeyUsageServerAuth)
	cliCert, cliKey := issue(3, x509.ExtKeyUsageClientAuth)
	writeFile(t, dir, "server.cert", string(srvCert))
	writeFile(t, dir, "server.key", string(srvKey))
	writeFile(t, dir, "ca.crt", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})))
	pair, err := tls.X509KeyPair(cliCert, cliKey)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	return roots, pair
}

// TestTLSServes: zot's http.tls with cacert and no other way to sign in:
// the server presents its certificate and, as zot does, requires a client
// certificate that the CA signed.
func TestTLSServes(t *testing.T) {
	dir := t.TempDir()
	roots, pair := testPKI(t, dir)
	port := freePort(t)
	cfg := `{"storage":{"rootDirectory":"` + dir + `/zot"},"http":{"address":"127.0.0.1","port":"` + port + `",
		"tls":{"cert":"` + dir + `/server.cert","key":"` + dir + `/server.key","cacert":"` + dir + `/ca.crt"}}}`
	serve(t, adaptString(t, cfg))

	get := func(certs []tls.Certificate) (*http.Response, error) {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: certs}}}
		return c.Get("https://127.0.0.1:" + port + "/v2/")
	}
	if resp, err := get(nil); err == nil {
		resp.Body.Close()
		t.Fatalf("no client certificate: %d, want a refused handshake", resp.StatusCode)
	}
	resp, err := get([]tls.Certificate{pair})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("with a client certificate: %d", resp.StatusCode)
	}
}

// TestClientCertServes: zot's mTLS with accessControl (examples/
// config-mtls.json): the certificate's common name is the user that
// policies name; without a certificate a client reads only what
// anonymousPolicy allows.
func TestClientCertServes(t *testing.T) {
	dir := t.TempDir()
	roots, pair := testPKI(t, dir)
	port := freePort(t)
	cfg := `{"storage":{"rootDirectory":"` + dir + `/zot"},"http":{"address":"127.0.0.1","port":"` + port + `",
		"tls":{"cert":"` + dir + `/server.cert","key":"` + dir + `/server.key","cacert":"` + dir + `/ca.crt"},
		"auth":{"mtls":{"identityAttributes":["CommonName"]}},
		"accessControl":{"repositories":{"**":{"policies":[{"users":["leaf"],"actions":["read","create"]}],"anonymousPolicy":["read"]}}}}}`
	a := adaptString(t, cfg)
	if c := a.reg.Auth.ClientCertificates; c == nil || c.User != "cn" {
		t.Fatalf("client_certificates %+v", c)
	}
	serve(t, a)
	host := "127.0.0.1:" + port
	with := func(certs ...tls.Certificate) remote.Option {
		return remote.WithTransport(&http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: certs}})
	}
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	r, err := name.ParseReference(host + "/apps/web:1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, with()); status(err) != http.StatusUnauthorized {
		t.Fatalf("push without a certificate: %v, want 401", err)
	}
	if err := remote.Write(r, img, with(pair)); err != nil {
		t.Fatalf("push as the certificate's user: %v", err)
	}
	if _, err := remote.Image(r, with()); err != nil {
		t.Fatalf("anonymous pull: %v", err)
	}
}

// TestReadOnlyServes: zot 1.x's http.ReadOnly becomes read_only: pulls
// work, pushes are refused.
func TestReadOnlyServes(t *testing.T) {
	dir := t.TempDir()
	port := freePort(t)
	a := adaptString(t, `{"storage":{"rootDirectory":"`+dir+`/zot"},"http":{"address":"127.0.0.1","port":"`+port+`","ReadOnly":true}}`)
	if !a.reg.ReadOnly || !a.warned("http.readOnly", "zot 1.x") {
		t.Fatalf("read_only %v, warnings %v", a.reg.ReadOnly, a.warnings)
	}
	serve(t, a)
	if _, err := push(t, "127.0.0.1:"+port, "apps/web:1", authn.Anonymous); status(err) != http.StatusForbidden {
		t.Fatalf("push to a read-only registry: %v, want 403", err)
	}
	resp, err := http.Get("http://127.0.0.1:" + port + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /v2/: %d", resp.StatusCode)
	}
}

// stopCaddy stops Caddy and waits until the stopped config has given its
// storage back (caddymodule.Released): the test's folders are removed
// next, and a store still open over a removed folder cannot close.
func stopCaddy(t testing.TB) {
	t.Helper()
	_ = caddy.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := caddymodule.Released(ctx); err != nil {
		t.Errorf("the storage was still held 30 s after caddy.Stop: %v", err)
	}
}

// TestSyncLiteralPrefixServes: a zot content prefix whose literal part
// has more than one component serves upstream's names under it as zot
// does: without a destination at the same name (team/app/x is upstream
// team/app/x), with stripPrefix under the destination (v/a/b is upstream
// vendor/tools/a/b). The adapted mirror put the literal part before
// one-component names only, so team/app/x asked upstream for app/x
// (outside the content prefix: 404) and v/a/b for a/b.
func TestSyncLiteralPrefixServes(t *testing.T) {
	up := upstream(t)
	upHost := strings.TrimPrefix(up, "http://")
	want := map[string]v1.Image{}
	for local, upstreamName := range map[string]string{
		"team/app:1":       "team/app:1",
		"team/app/x:1":     "team/app/x:1",
		"team/app/x/y:1":   "team/app/x/y:1",
		"library/alpine:3": "library/alpine:3",
		"v/a:1":            "vendor/tools/a:1",
		"v/a/b:1":          "vendor/tools/a/b:1",
		"team/other:1":     "team/other:1",
		"library/debian:1": "library/debian:1",
		"vendor/tools/c:1": "vendor/tools/c:1",
	} {
		img, err := push(t, upHost, upstreamName, authn.Anonymous)
		if err != nil {
			t.Fatal(err)
		}
		want[local] = img
	}
	dir := t.TempDir()
	port := freePort(t)
	serve(t, adaptString(t, `{
  "storage": {"rootDirectory": "`+dir+`/zot"},
  "http": {"address": "127.0.0.1", "port": "`+port+`"},
  "extensions": {"sync": {"enable": true, "registries": [
    {"urls": ["`+up+`"], "onDemand": true, "tlsVerify": false, "content": [
      {"prefix": "team/app/**"},
      {"prefix": "/library/alpine"},
      {"prefix": "/vendor/tools/**", "destination": "/v", "stripPrefix": true}
    ]}
  ]}}
}`))
	host := "127.0.0.1:" + port
	for _, tc := range []struct {
		repo string
		want int
	}{
		{"team/app:1", 0},
		{"team/app/x:1", 0},
		{"team/app/x/y:1", 0},
		{"library/alpine:3", 0},
		{"v/a:1", 0},
		{"v/a/b:1", 0},
		// Outside the content prefixes, as in zot.
		{"team/other:1", http.StatusNotFound},
		{"library/debian:1", http.StatusNotFound},
		{"v/vendor/tools/c:1", http.StatusNotFound},
	} {
		got, err := remote.Image(ref(t, host, tc.repo))
		if status(err) != tc.want || (tc.want == 0 && err != nil) {
			t.Errorf("pull %s: %v, want %d", tc.repo, err, tc.want)
			continue
		}
		if err == nil && digestOf(t, got) != digestOf(t, want[tc.repo]) {
			t.Errorf("pull %s: another image", tc.repo)
		}
	}
}

// TestDefaultMirrorPolicyServes: zot judges a synced repository by the
// name it has there (acme/internal/tool), so `*/internal/**` keeps it to
// alice. Behind the default mirror its name here is
// 127.0.0.1/acme/internal/tool, which that pattern does not match: `**`
// decided, and anyone could pull it (with the mirror's credentials).
// Each pattern now also holds for the default mirror's names.
func TestDefaultMirrorPolicyServes(t *testing.T) {
	up := upstream(t)
	upHost := strings.TrimPrefix(up, "http://")
	for _, repo := range []string{"acme/internal/tool:1", "acme/tool:1"} {
		if _, err := push(t, upHost, repo, authn.Anonymous); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	writeHtpasswd(t, dir, map[string]string{"alice": "alice-pw", "bob": "bob-pw"})
	port := freePort(t)
	a := adaptString(t, `{
  "storage": {"rootDirectory": "`+dir+`/zot"},
  "http": {
    "address": "127.0.0.1", "port": "`+port+`",
    "auth": {"htpasswd": {"path": "`+dir+`/htpasswd"}, "failDelay": 0},
    "accessControl": {"repositories": {
      "**": {"anonymousPolicy": ["read"], "defaultPolicy": ["read"]},
      "*/internal/**": {"policies": [{"users": ["alice"], "actions": ["read"]}]}
    }}
  },
  "extensions": {"sync": {"enable": true, "registries": [
    {"urls": ["`+up+`"], "onDemand": true, "tlsVerify": false, "content": [{"prefix": "**"}]}
  ]}}
}`)
	if !a.warned("http.accessControl.repositories.*/internal/**", "127.0.0.1/") {
		t.Errorf("no warning that */internal/** as written also matches the default mirror's names: %v", a.warnings)
	}
	serve(t, a)
	host := "127.0.0.1:" + port
	alice := remote.WithAuth(&authn.Basic{Username: "alice", Password: "alice-pw"})
	bob := remote.WithAuth(&authn.Basic{Username: "bob", Password: "bob-pw"})
	for _, tc := range []struct {
		repo string
		opt  remote.Option
		want int
	}{
		{"acme/internal/tool:1", remote.WithAuth(authn.Anonymous), http.StatusUnauthorized},
		{"acme/internal/tool:1", bob, http.StatusForbidden},
		{"acme/internal/tool:1", alice, 0},
		{"acme/tool:1", remote.WithAuth(authn.Anonymous), 0},
	} {
		_, err := remote.Image(ref(t, host, tc.repo), tc.opt)
		if status(err) != tc.want || (tc.want == 0 && err != nil) {
			t.Errorf("pull %s: %v, want %d", tc.repo, err, tc.want)
		}
	}
}
