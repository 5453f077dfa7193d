package pgmeta

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// applied lists the versions schema_migrations records, with repeats.
func applied(t *testing.T, dsn string) []int {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, _ := conn.Query(ctx, "SELECT version FROM schema_migrations ORDER BY version")
	vs, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		t.Fatal(err)
	}
	return vs
}

func embeddedVersions(t *testing.T) []int {
	t.Helper()
	ms, err := readMigrations(migrations)
	if err != nil {
		t.Fatal(err)
	}
	var vs []int
	for _, m := range ms {
		vs = append(vs, m.version)
	}
	return vs
}

// TestOpenConcurrently: replicas that start at once on a fresh database
// all open it, and each migration runs once.
func TestOpenConcurrently(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	const replicas = 4
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range replicas {
		wg.Go(func() {
			<-start
			s, err := Open(context.Background(), Options{DSN: dsn})
			if err != nil {
				t.Errorf("replica %d: %v", i, err)
				return
			}
			defer s.Close()
			if _, err := s.APIKeys(); err != nil {
				t.Errorf("replica %d after Open: %v", i, err)
			}
		})
	}
	close(start)
	wg.Wait()
	if got, want := applied(t, dsn), embeddedVersions(t); !slices.Equal(got, want) {
		t.Fatalf("schema_migrations = %v, want %v", got, want)
	}
}

// TestReopen: a database already migrated opens as it is; a version this
// binary does not know (a newer replica's) is left alone.
func TestReopen(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	s := openDSN(t, dsn)
	if err := s.CreateAPIKey("k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(context.Background(), "INSERT INTO schema_migrations (version, name) VALUES (9999, '9999_future.sql')"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openDSN(t, dsn)
	if rec, err := s.APIKey("k"); err != nil || string(rec) != "v" {
		t.Fatalf("after reopening: %q %v", rec, err)
	}
	if got, want := applied(t, dsn), append(embeddedVersions(t), 9999); !slices.Equal(got, want) {
		t.Fatalf("schema_migrations = %v, want %v", got, want)
	}
}

// TestMigrationFailure: a migration that fails leaves nothing of itself
// behind and is not recorded, the ones before it stay, and Open fails
// naming it.
func TestMigrationFailure(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	fsys := fstest.MapFS{
		"0001_one.sql": {Data: []byte("CREATE TABLE one (x int);")},
		"0002_two.sql": {Data: []byte("CREATE TABLE two (x int); SELECT no_such_function();")},
	}
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	err = migrate(ctx, pool, fsys)
	if err == nil || !strings.Contains(err.Error(), "0002_two.sql") {
		t.Fatalf("migrate = %v, want the failure of 0002_two.sql", err)
	}
	if got := applied(t, dsn); !slices.Equal(got, []int{1}) {
		t.Fatalf("schema_migrations = %v, want [1]", got)
	}
	var tables []string
	rows, _ := pool.Query(ctx, "SELECT tablename FROM pg_tables WHERE tablename IN ('one', 'two') ORDER BY 1")
	if tables, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(tables, []string{"one"}) {
		t.Fatalf("tables = %v, want [one]", tables)
	}
	// Fixed, it applies on the next start.
	fsys["0002_two.sql"] = &fstest.MapFile{Data: []byte("CREATE TABLE two (x int);")}
	if err := migrate(ctx, pool, fsys); err != nil {
		t.Fatal(err)
	}
	if got := applied(t, dsn); !slices.Equal(got, []int{1, 2}) {
		t.Fatalf("schema_migrations = %v, want [1 2]", got)
	}
}

// TestReadMigrationsRefuses: misnamed files and repeated versions are
// refused before any database sees them.
func TestReadMigrationsRefuses(t *testing.T) {
	for name, fsys := range map[string]fstest.MapFS{
		"no number":        {"one.sql": {}},
		"short number":     {"1_one.sql": {}},
		"not sql":          {"0001_one.txt": {}},
		"upper case":       {"0001_One.sql": {}},
		"repeated version": {"0001_one.sql": {}, "0001_two.sql": {}},
	} {
		if _, err := readMigrations(fsys); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	ms, err := readMigrations(fstest.MapFS{"0002_b.sql": {}, "0001_a.sql": {}, "0010_c.sql": {}})
	if err != nil {
		t.Fatal(err)
	}
	var order []int
	for _, m := range ms {
		order = append(order, m.version)
	}
	if !slices.Equal(order, []int{1, 2, 10}) {
		t.Fatalf("order %v, want [1 2 10]", order)
	}
}
