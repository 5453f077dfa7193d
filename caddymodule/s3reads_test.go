package caddymodule

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/crypto/bcrypt"

	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// s3ReadsSite starts Caddy with a registry on srv's bucket and a fresh
// database, the user ci (password pw) allowed to read and push team/**,
// anonymous nobody, and reads as the storage s3 lines extra say.
func s3ReadsSite(t testing.TB, srv *s3test.Server, bucket, extra string) string {
	return s3ReadsSiteWith(t, srv, bucket, "", extra)
}

// s3ReadsSiteWith is s3ReadsSite with more lines in oci_registry.
func s3ReadsSiteWith(t testing.TB, srv *s3test.Server, bucket, registryExtra, extra string) string {
	t.Helper()
	return s3ReadsSiteAt(t, srv, srv.Endpoint, bucket, registryExtra, extra)
}

// s3ReadsSiteAt is s3ReadsSiteWith with srv reached at endpoint (another
// spelling of its address).
func s3ReadsSiteAt(t testing.TB, srv *s3test.Server, endpoint, bucket, registryExtra, extra string) string {
	t.Helper()
	pg := pgtest.Start(t)
	t.Setenv("TEST_DATABASE_URL", pg.NewDatabase(t))
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	htp := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(htp, []byte("ci:"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	cfg := adaptFront(t, "{\n\tadmin off\n\tlog {\n\t\tlevel ERROR\n\t}\n}\nhttp://"+addr+` {
	oci_registry {
`+registryExtra+`
		auth {
			htpasswd `+htp+`
			fail_delay 1ms
			group pushers ci
			access team/** {
				group pushers read create
			}
			access docker.io/** {
				anonymous read
			}
		}
		storage s3 {
			bucket `+bucket+`
			endpoint `+endpoint+`
			region `+srv.Region+`
			prefix reg/
			access_key `+srv.AccessKey+`
			secret_key `+srv.SecretKey+`
			path_style
`+extra+`		}
		metadata postgres {env.TEST_DATABASE_URL}
	}
}
`)
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopCaddy(t) })
	return "http://" + addr
}

// pushBlob pushes c to repo monolithically as ci and returns its digest.
func pushBlob(t testing.TB, base, repo string, c []byte) string {
	t.Helper()
	sum := sha256.Sum256(c)
	d := "sha256:" + hex.EncodeToString(sum[:])
	req, _ := http.NewRequest(http.MethodPost, base+"/v2/"+repo+"/blobs/uploads/?digest="+d, bytes.NewReader(c))
	req.SetBasicAuth("ci", "pw")
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("push: %s", resp.Status)
	}
	return d
}

// noFollow is a client that shows redirects instead of following them.
var noFollow = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func blobRequest(t *testing.T, method, url string, user bool, rng string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	if user {
		req.SetBasicAuth("ci", "pw")
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := noFollow.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// TestRedirectBlobGets: with redirect, a GET of a blob the caller may
// read answers 307 to a presigned URL on the configured endpoint, which
// serves the bytes (and ranges) without credentials. A GET the registry
// refuses (no credentials, a repository that does not link the blob) is
// refused as before, with no URL; a HEAD is answered by the registry.
func TestRedirectBlobGets(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	// The registry is at 127.0.0.1: an endpoint there too would carry
	// the credentials (TestRedirectNotWhereCredentialsFollow).
	endpoint := strings.Replace(srv.Endpoint, "127.0.0.1", "localhost", 1)
	base := s3ReadsSiteAt(t, srv, endpoint, bucket, "", "\t\t\tredirect 2m\n")
	c := make([]byte, 2<<20+3)
	rand.Read(c)
	d := pushBlob(t, base, "team/app", c)
	pushBlob(t, base, "team/other", []byte("other"))
	url := base + "/v2/team/app/blobs/" + d

	resp := blobRequest(t, http.MethodGet, url, true, "")
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusTemporaryRedirect || !strings.HasPrefix(loc, endpoint+"/"+bucket+"/reg/blobs/sha256/") {
		t.Fatalf("GET: %s, Location %q; want 307 to %s/%s/reg/blobs/...", resp.Status, loc, endpoint, bucket)
	}
	if !strings.Contains(loc, "X-Amz-Expires=120") || resp.Header.Get("Cache-Control") != "no-store" || resp.Header.Get("Docker-Content-Digest") != d {
		t.Errorf("redirect: Location %q, headers %v", loc, resp.Header)
	}
	got := blobRequest(t, http.MethodGet, loc, false, "")
	body, _ := io.ReadAll(got.Body)
	if got.StatusCode != http.StatusOK || !bytes.Equal(body, c) {
		t.Fatalf("following the redirect: %s, %d bytes", got.Status, len(body))
	}
	part := blobRequest(t, http.MethodGet, loc, false, "bytes=100-199")
	body, _ = io.ReadAll(part.Body)
	if part.StatusCode != http.StatusPartialContent || !bytes.Equal(body, c[100:200]) {
		t.Fatalf("a range at the redirect: %s, %d bytes", part.Status, len(body))
	}
	// A tampered URL (another key, same signature) is refused by S3.
	tampered := strings.Replace(loc, d[len("sha256:"):], strings.Repeat("0", 64), 1)
	if r := blobRequest(t, http.MethodGet, tampered, false, ""); r.StatusCode != http.StatusForbidden {
		t.Errorf("a presigned URL edited to another key: %s, want 403", r.Status)
	}

	if r := blobRequest(t, http.MethodGet, url, true, "bytes=100-199"); r.StatusCode != http.StatusTemporaryRedirect {
		t.Errorf("ranged GET: %s, want 307 (the range goes to the bucket)", r.Status)
	}
	for _, tc := range []struct {
		what   string
		method string
		url    string
		user   bool
		rng    string
		want   int
	}{
		{"HEAD", http.MethodHead, url, true, "", http.StatusOK},
		{"GET without credentials", http.MethodGet, url, false, "", http.StatusUnauthorized},
		{"GET of a blob the repository does not link", http.MethodGet, base + "/v2/team/other/blobs/" + d, true, "", http.StatusNotFound},
		{"GET of a repository not allowed", http.MethodGet, base + "/v2/elsewhere/blobs/" + d, true, "", http.StatusForbidden},
		// S3 ignores this range and sends the whole blob; the registry
		// refuses it as without redirect.
		{"GET of a backwards range", http.MethodGet, url, true, "bytes=500-0", http.StatusRequestedRangeNotSatisfiable},
		{"GET of a range past the end", http.MethodGet, url, true, "bytes=5000000-", http.StatusRequestedRangeNotSatisfiable},
	} {
		r := blobRequest(t, tc.method, tc.url, tc.user, tc.rng)
		if r.StatusCode != tc.want || r.Header.Get("Location") != "" {
			t.Errorf("%s: %s, Location %q; want %d and none", tc.what, r.Status, r.Header.Get("Location"), tc.want)
		}
	}
}

// TestRedirectNotWhereCredentialsFollow: Go's HTTP client keeps a
// request's Authorization on a redirect to the same host name (any port)
// or under it. With the registry and the S3 endpoint both on 127.0.0.1,
// a GET with credentials was answered 307 to the endpoint, and a Go
// client sent the user's Basic password to the S3 server with it (on the
// binary: localhost:5002 and localhost:7071, a logging proxy before
// versitygw saw "Authorization: Basic <alice:alice-pw>"). Such a GET is
// now streamed by the registry; one without credentials is still
// redirected.
func TestRedirectNotWhereCredentialsFollow(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	var seen atomic.Int32
	s3 := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("X-Amz-Signature") != "" && r.Header.Get("Authorization") != "" {
			seen.Add(1)
		}
		target, _ := url.Parse(srv.Endpoint)
		proxy := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host // the presigned URL is signed for this host
		}}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(s3.Close)
	base := s3ReadsSiteAt(t, srv, s3.URL, bucket, "", "\t\t\tredirect 2m\n")
	c := make([]byte, 1<<20+5)
	rand.Read(c)
	d := pushBlob(t, base, "team/app", c)

	// A Go client as many tools are written: credentials set on the
	// request, redirects followed by the default rules.
	req, _ := http.NewRequest(http.MethodGet, base+"/v2/team/app/blobs/"+d, nil)
	req.SetBasicAuth("ci", "pw")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, c) {
		t.Fatalf("GET with credentials: %s, %d bytes", resp.Status, len(body))
	}
	if n := seen.Load(); n != 0 {
		t.Errorf("the S3 endpoint got the client's Authorization with %d presigned GETs", n)
	}
	if r := blobRequest(t, http.MethodGet, base+"/v2/team/app/blobs/"+d, true, ""); r.StatusCode != http.StatusOK || r.Header.Get("Location") != "" {
		t.Errorf("GET with credentials: %s, Location %q; want 200 streamed", r.Status, r.Header.Get("Location"))
	}
}

// TestReadCacheServesPulls: with cache, a ranged pull is not copied, a
// whole pull is, and later pulls (whole and ranged) are served from the
// copy: the object is overwritten behind the registry's back with other
// bytes of the same size, and pulls still answer the blob's own.
func TestReadCacheServesPulls(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	cdir := t.TempDir()
	base := s3ReadsSite(t, srv, bucket, "\t\t\tcache "+cdir+" 64MiB\n")
	c := make([]byte, 3<<20+1)
	rand.Read(c)
	d := pushBlob(t, base, "team/app", c)
	url := base + "/v2/team/app/blobs/" + d
	hexd := d[len("sha256:"):]

	pull := func(rng string, want []byte, status int) {
		t.Helper()
		r := blobRequest(t, http.MethodGet, url, true, rng)
		body, _ := io.ReadAll(r.Body)
		if r.StatusCode != status || !bytes.Equal(body, want) {
			t.Fatalf("GET %q: %s, %d bytes; want %d, %d bytes", rng, r.Status, len(body), status, len(want))
		}
	}
	pull("bytes=10-19", c[10:20], http.StatusPartialContent)
	if _, err := os.Stat(filepath.Join(cdir, "sha256", hexd)); !os.IsNotExist(err) {
		t.Fatalf("a ranged read was cached: %v", err)
	}
	pull("", c, http.StatusOK)
	// The copy is kept when the handler closes the blob, which may be
	// just after the client has the last byte.
	copyPath := filepath.Join(cdir, "sha256", hexd)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		fi, err := os.Stat(copyPath)
		if err == nil && fi.Size() == int64(len(c)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a pull the cache holds %v, %v", fi, err)
		}
	}
	// Same-size other bytes at the object's key: only the copy has the
	// blob's bytes, so what is served comes from it.
	garbage := bytes.Repeat([]byte{'x'}, len(c))
	srv.Put(t, bucket, "reg/blobs/sha256/"+hexd[:2]+"/"+hexd, garbage)
	pull("", c, http.StatusOK)
	pull("bytes=100-", c[100:], http.StatusPartialContent)
}

// TestRedirectMirrorFill: with redirect, a mirrored blob being fetched is
// streamed to the client that asked (the bucket does not have it yet);
// once it is committed, a GET is redirected like any other.
func TestRedirectMirrorFill(t *testing.T) {
	upstream := httptest.NewServer(ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0))))
	defer upstream.Close()
	layer, err := random.Layer(1<<20, types.OCILayer)
	if err != nil {
		t.Fatal(err)
	}
	upRepo, _ := name.NewRepository(strings.TrimPrefix(upstream.URL, "http://")+"/library/app", name.Insecure)
	if err := remote.WriteLayer(upRepo, layer); err != nil {
		t.Fatal(err)
	}
	d, _ := layer.Digest()
	rc, _ := layer.Compressed()
	want, _ := io.ReadAll(rc)

	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	base := s3ReadsSiteWith(t, srv, bucket, "\t\tmirror docker.io {\n\t\t\tupstream "+upstream.URL+"\n\t\t}\n", "\t\t\tredirect\n")
	url := base + "/v2/docker.io/library/app/blobs/" + d.String()

	cold := blobRequest(t, http.MethodGet, url, false, "")
	body, _ := io.ReadAll(cold.Body)
	if cold.StatusCode != http.StatusOK || !bytes.Equal(body, want) {
		t.Fatalf("cold GET of a mirrored blob: %s, Location %q, %d bytes; want it streamed", cold.Status, cold.Header.Get("Location"), len(body))
	}
	// The fill commits after its last byte: then GETs are redirected.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		warm := blobRequest(t, http.MethodGet, url, false, "")
		if warm.StatusCode == http.StatusTemporaryRedirect {
			got := blobRequest(t, http.MethodGet, warm.Header.Get("Location"), false, "")
			body, _ := io.ReadAll(got.Body)
			if got.StatusCode != http.StatusOK || !bytes.Equal(body, want) {
				t.Fatalf("following the redirect of a mirrored blob: %s, %d bytes", got.Status, len(body))
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET of a committed mirrored blob: %s, want 307", warm.Status)
		}
	}
}

// TestBlobGetAsksS3BeforeItAnswers: a blob GET opens from the metadata's
// record without a HEAD, so S3 is asked by the GET of the bytes; that GET
// is sent before the status line, so a blob S3 lost behind the registry's
// back is a 404 BLOB_UNKNOWN and S3 down a 503, never a 200 whose body is
// cut short. Once S3 is back, the GET serves again (no restart).
func TestBlobGetAsksS3BeforeItAnswers(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	base := s3ReadsSite(t, srv, bucket, "")
	c := make([]byte, 64<<10)
	rand.Read(c)
	kept := pushBlob(t, base, "team/app", c)
	rand.Read(c)
	lost := pushBlob(t, base, "team/app", c)
	hexd := lost[len("sha256:"):]
	srv.Delete(t, bucket, "reg/blobs/sha256/"+hexd[:2]+"/"+hexd)

	get := func(d string) (*http.Response, []byte) {
		t.Helper()
		r := blobRequest(t, http.MethodGet, base+"/v2/team/app/blobs/"+d, true, "")
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Fatalf("GET %s: the body was cut: %v (status %s)", d, err, r.Status)
		}
		return r, body
	}
	if r, body := get(lost); r.StatusCode != http.StatusNotFound || !strings.Contains(string(body), "BLOB_UNKNOWN") {
		t.Fatalf("GET of a blob S3 lost: %s %s", r.Status, body)
	}
	r := blobRequest(t, http.MethodGet, base+"/v2/team/app/blobs/"+lost, true, "bytes=100-199")
	if body, err := io.ReadAll(r.Body); err != nil || r.StatusCode != http.StatusNotFound || !strings.Contains(string(body), "BLOB_UNKNOWN") {
		t.Fatalf("ranged GET of a blob S3 lost: %s %s (%v)", r.Status, body, err)
	}
	r = blobRequest(t, http.MethodGet, base+"/v2/team/app/blobs/"+kept, true, "bytes=100-199")
	if body, err := io.ReadAll(r.Body); err != nil || r.StatusCode != http.StatusPartialContent || len(body) != 100 {
		t.Fatalf("ranged GET: %s, %d bytes (%v)", r.Status, len(body), err)
	}
	srv.Kill()
	if r, body := get(kept); r.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "UNAVAILABLE") {
		t.Fatalf("GET with S3 down: %s %s", r.Status, body)
	}
	srv.Restart(t)
	if r, body := get(kept); r.StatusCode != http.StatusOK || len(body) != len(c) {
		t.Fatalf("GET after S3 came back: %s, %d bytes", r.Status, len(body))
	}
}

// TestBlobHeadAsksS3: a HEAD answers as a GET would. A client HEADs each
// blob before it pushes it and skips the upload on a 200, so a HEAD
// answered from the metadata's record alone said 200 for a blob S3 lost
// behind the registry's back, and the manifest pushed next referenced
// bytes nobody could pull. The same holds for a mount from a repository
// whose blob is lost: it must not link it. Pushed again, the blob serves.
func TestBlobHeadAsksS3(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	base := s3ReadsSite(t, srv, bucket, "")
	c := make([]byte, 64<<10)
	rand.Read(c)
	kept := pushBlob(t, base, "team/app", c)
	lostBytes := make([]byte, 64<<10+1)
	rand.Read(lostBytes)
	lost := pushBlob(t, base, "team/app", lostBytes)
	hexd := lost[len("sha256:"):]
	srv.Delete(t, bucket, "reg/blobs/sha256/"+hexd[:2]+"/"+hexd)

	if r := blobRequest(t, http.MethodHead, base+"/v2/team/app/blobs/"+kept, true, ""); r.StatusCode != http.StatusOK || r.ContentLength != int64(len(c)) {
		t.Fatalf("HEAD of a stored blob: %s, %d bytes", r.Status, r.ContentLength)
	}
	// A refusal is no blob: nothing may keep it as the blob's answer for
	// a year, as a cache in front would keep the blob's own.
	notForAYear := func(what string, r *http.Response) {
		t.Helper()
		if cc := r.Header.Get("Cache-Control"); strings.Contains(cc, "max-age") {
			t.Errorf("%s: %s with Cache-Control %q", what, r.Status, cc)
		}
	}
	if r := blobRequest(t, http.MethodHead, base+"/v2/team/app/blobs/"+lost, true, ""); r.StatusCode != http.StatusNotFound {
		t.Fatalf("HEAD of a blob S3 lost: %s, want 404 as its GET", r.Status)
	} else {
		notForAYear("HEAD of a blob S3 lost", r)
	}
	if r := blobRequest(t, http.MethodGet, base+"/v2/team/app/blobs/"+lost, true, ""); r.StatusCode != http.StatusNotFound {
		t.Fatalf("GET of a blob S3 lost: %s", r.Status)
	} else {
		notForAYear("GET of a blob S3 lost", r)
	}
	r := blobRequest(t, http.MethodPost, base+"/v2/team/other/blobs/uploads/?mount="+lost+"&from=team/app", true, "")
	if r.StatusCode != http.StatusAccepted {
		t.Fatalf("mount of a blob S3 lost: %s, want 202 (an upload instead)", r.Status)
	}
	if r := blobRequest(t, http.MethodHead, base+"/v2/team/other/blobs/"+lost, true, ""); r.StatusCode != http.StatusNotFound {
		t.Fatalf("HEAD in the mount's target: %s", r.Status)
	}

	pushBlob(t, base, "team/app", lostBytes)
	if r := blobRequest(t, http.MethodHead, base+"/v2/team/app/blobs/"+lost, true, ""); r.StatusCode != http.StatusOK || r.ContentLength != int64(len(lostBytes)) {
		t.Fatalf("HEAD after the blob was pushed again: %s, %d bytes", r.Status, r.ContentLength)
	}
	r = blobRequest(t, http.MethodGet, base+"/v2/team/app/blobs/"+lost, true, "")
	if body, err := io.ReadAll(r.Body); err != nil || r.StatusCode != http.StatusOK || !bytes.Equal(body, lostBytes) {
		t.Fatalf("GET after the blob was pushed again: %s, %d bytes (%v)", r.Status, len(body), err)
	}

	srv.Kill()
	if r := blobRequest(t, http.MethodHead, base+"/v2/team/app/blobs/"+kept, true, ""); r.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("HEAD with S3 down: %s, want 503 as its GET", r.Status)
	} else {
		notForAYear("HEAD with S3 down", r)
	}
}

// BenchmarkBlobHeadS3: what a blob HEAD costs through the whole registry
// (Caddy, PostgreSQL, versitygw on loopback), with and without the read
// cache. Since a HEAD asks S3 whether the bytes are still there (as its
// GET does), it costs one S3 HEAD more than the metadata lookup alone.
func BenchmarkBlobHeadS3(b *testing.B) {
	for _, bc := range []struct{ name, extra string }{
		{"plain", ""},
		{"readcache", "\t\t\tcache " + b.TempDir() + " 64MiB\n"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			srv := s3test.Start(b)
			base := s3ReadsSite(b, srv, srv.Bucket(b), bc.extra)
			c := make([]byte, 1<<20)
			rand.Read(c)
			d := pushBlob(b, base, "team/app", c)
			req, _ := http.NewRequest(http.MethodHead, base+"/v2/team/app/blobs/"+d, nil)
			req.SetBasicAuth("ci", "pw")
			b.ResetTimer()
			for range b.N {
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Fatalf("HEAD: %s", resp.Status)
				}
			}
		})
	}
}
