package e2e

import (
	"strings"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// replicaSite is the oci_registry block of one replica on a shared bucket
// and database, secrets from the environment as an operator writes them.
func replicaSite(srv *s3test.Server, bucket string) string {
	return `	oci_registry {
		storage s3 {
			bucket ` + bucket + `
			endpoint ` + srv.Endpoint + `
			region ` + srv.Region + `
			prefix registry/
			access_key {env.CADDY_OCI_TEST_S3_KEY}
			secret_key {env.CADDY_OCI_TEST_S3_SECRET}
			path_style
		}
		metadata postgres {env.CADDY_OCI_TEST_DATABASE_URL}
	}`
}

// cluster starts n replicas on one versitygw bucket and one PostgreSQL
// database, and a Caddy in front of them that spreads requests round
// robin, as the README's "Running several replicas" describes. It
// returns the front and the replicas.
func cluster(t *testing.T, n int) (*server, []*server) {
	t.Helper()
	needBinary(t)
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	pg := pgtest.Start(t)
	t.Setenv("CADDY_OCI_TEST_S3_KEY", srv.AccessKey)
	t.Setenv("CADDY_OCI_TEST_S3_SECRET", srv.SecretKey)
	t.Setenv("CADDY_OCI_TEST_DATABASE_URL", pg.NewDatabase(t))
	var replicas []*server
	var upstreams []string
	for range n {
		r := siteServer(t, "", replicaSite(srv, bucket), 0)
		replicas = append(replicas, r)
		upstreams = append(upstreams, r.addr)
	}
	front := siteServer(t, "", `	reverse_proxy `+strings.Join(upstreams, " ")+` {
		lb_policy round_robin
		flush_interval -1
	}`, 0)
	return front, replicas
}

// TestConformanceReplicas runs the whole conformance suite against three
// replicas on S3 and PostgreSQL behind a round-robin load balancer: every
// request of a push, chunked or not, may land on another replica.
func TestConformanceReplicas(t *testing.T) {
	bin := conformanceBin(t)
	front, _ := cluster(t, 3)
	runConformance(t, bin, front.addr, "conformance-replicas.txt")
}
