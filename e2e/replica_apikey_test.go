package e2e

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/authscope/oidctest"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// TestReplicaAPIKeyPostgresDown: API keys live in PostgreSQL on a
// replica. With PostgreSQL down, a push with a key is answered 503
// UNAVAILABLE with Retry-After (the key may be right; clients retry),
// not 500; once it is back, the same key pushes.
func TestReplicaAPIKeyPostgresDown(t *testing.T) {
	needBinary(t)
	p := oidctest.New(t, "ci-bot", "artifact-workloads")
	secret := filepath.Join(t.TempDir(), "client-secret")
	if err := os.WriteFile(secret, []byte(oidctest.ClientSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	pg := pgtest.Start(t)
	t.Setenv("CADDY_OCI_TEST_S3_KEY", srv.AccessKey)
	t.Setenv("CADDY_OCI_TEST_S3_SECRET", srv.SecretKey)
	t.Setenv("CADDY_OCI_TEST_DATABASE_URL", pg.NewDatabase(t))
	port := freePort(t)
	auth := fmt.Sprintf(`		auth {
			fail_delay 10ms
			access ** {
				anonymous read
			}
			access blumeops/** {
				group artifact-workloads read create
			}
			oidc {
				issuer %s
				client_id %s
				client_secret_file %s
				external_url http://127.0.0.1:%d
			}
		}
`, p.Issuer(), oidctest.ClientID, strconv.Quote(secret), port)
	r := siteServerOn(t, port, "", replicaSite(srv, bucket, auth, ""), http.StatusUnauthorized)
	w := signIn(t, r)
	var created struct{ Key string }
	w.do(http.MethodPost, "/_oci/auth/apikeys", map[string]any{"label": "ci", "ttl_days": 30}, http.StatusCreated, &created)
	push := func() *http.Response {
		return do(t, http.MethodPost, r.url("/v2/blumeops/app/blobs/uploads/"), nil, map[string]string{
			"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte("ci-bot:"+created.Key))})
	}
	if resp := push(); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("push with the key: %s %s", resp.Status, readAll(t, resp))
	}

	if err := pg.Kill(); err != nil {
		t.Fatal(err)
	}
	wantUnavailable(t, push(), "push with an API key while PostgreSQL is down")
	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the key to push once PostgreSQL is back", func() bool {
		return push().StatusCode == http.StatusAccepted
	})
}
