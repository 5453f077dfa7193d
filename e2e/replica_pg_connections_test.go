package e2e

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestReplicaPostgresConnectionsExhausted: another client takes every
// connection PostgreSQL has left and the replicas' own are ended, so
// their pools cannot reconnect ("too many clients"). Requests answer 503
// with Retry-After within the store's call bound; once the connections
// are freed the same replicas serve again without a restart.
func TestReplicaPostgresConnectionsExhausted(t *testing.T) {
	crane := tool(t, "crane")
	c := startCluster(t, 2, "", nil)
	before := pushImage(t, crane, c.front, "drill/pg:before")

	ctx := context.Background()
	dsn := c.pg.DSN("postgres")
	var hog []*pgx.Conn
	defer func() {
		for _, conn := range hog {
			conn.Close(ctx)
		}
	}()
	for len(hog) < 300 {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Logf("PostgreSQL refused connection %d: %v", len(hog)+1, err)
			break
		}
		hog = append(hog, conn)
	}
	if len(hog) == 0 {
		t.Fatal("no connection to hold")
	}
	// The replicas' connections end; their pools find no room to reconnect.
	if _, err := hog[0].Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'caddy-oci'`); err != nil {
		t.Fatal(err)
	}
	// Whatever the terminations freed is taken too.
	for {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			break
		}
		hog = append(hog, conn)
	}
	start := time.Now()
	checkUnavailable(t, c, "PostgreSQL out of connections")
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("four requests took %s to be refused", took)
	} else {
		t.Logf("four requests refused in %s", took.Round(time.Millisecond))
	}
	for _, conn := range hog {
		conn.Close(ctx)
	}
	hog = nil
	resp := do(t, http.MethodGet, c.replicas[0].url("/v2/"), nil, nil)
	t.Logf("freed: /v2/ answers %s", resp.Status)
	checkRecovered(t, c, crane, before, "drill/pg:after")
}
