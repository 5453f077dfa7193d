// Package pgtest runs a real PostgreSQL server for tests: Debian's
// postgresql package, initialised in a temporary folder, listening on
// 127.0.0.1 at a free port and on a unix socket in that folder. As root
// (CI) the server runs as the postgres user, as PostgreSQL refuses root.
//
// A test binary shares one server (Shared) and each test gets a database
// of its own (NewDatabase), which keeps tests fast and independent. A
// test that stops and starts the server (fault drills) starts a private
// one with Start.
//
// Without PostgreSQL installed, tests skip, unless CADDY_OCI_E2E=1 makes
// every missing tool a failure.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Server is a PostgreSQL server of tests.
type Server struct {
	bin  string // folder of initdb, pg_ctl, postgres
	dir  string // temporary folder: data/, the socket, the log
	port int
	// asPostgres: commands run through runuser as the postgres user.
	asPostgres bool
}

// BinEnv names a folder of PostgreSQL's programs to use instead of
// Debian's, e.g. on a machine whose PostgreSQL is installed elsewhere.
const BinEnv = "CADDY_OCI_PG_BIN"

// binDir finds the newest installed PostgreSQL's programs.
func binDir() (string, error) {
	if dir := os.Getenv(BinEnv); dir != "" {
		if _, err := os.Stat(filepath.Join(dir, "pg_ctl")); err != nil {
			return "", fmt.Errorf("%w: %s=%s: %w", errNotInstalled, BinEnv, dir, err)
		}
		return dir, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { return versionOf(a) - versionOf(b) })
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(dirs[i], "pg_ctl")); err == nil {
			return dirs[i], nil
		}
	}
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		if p, err = filepath.EvalSymlinks(p); err == nil {
			return filepath.Dir(p), nil
		}
	}
	return "", errNotInstalled
}

// versionOf reads 15 out of /usr/lib/postgresql/15/bin.
func versionOf(dir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
	return v
}

// skipOrFail skips t for a missing PostgreSQL, or fails it under
// CADDY_OCI_E2E=1.
func skipOrFail(t testing.TB, err error) {
	t.Helper()
	if os.Getenv("CADDY_OCI_E2E") == "1" {
		t.Fatalf("pgtest: %v", err)
	}
	t.Skipf("pgtest: %v; set CADDY_OCI_E2E=1 to make this a failure", err)
}

// Start initialises and starts a private server, stopped when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartIn(t, "")
}

// StartIn is Start with the server's files in a new folder inside parent
// ("": the system's temporary folder): a small filesystem of the test's,
// to fill to the brim.
func StartIn(t testing.TB, parent string) *Server {
	t.Helper()
	s, err := start(parent)
	if errors.Is(err, errNotInstalled) {
		skipOrFail(t, err)
	}
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

var errNotInstalled = errors.New("PostgreSQL is not installed (apt-get install postgresql)")

func start(parent string) (*Server, error) {
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	sweepOrphans(bin)
	dir, err := os.MkdirTemp(parent, dirPrefix)
	if err != nil {
		return nil, err
	}
	s := &Server{bin: bin, dir: dir, asPostgres: os.Geteuid() == 0}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if s.asPostgres {
		if err := chownToPostgres(dir); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	if out, err := s.run("initdb", "-D", s.dataDir(), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %w\n%s", err, out)
	}
	// A port found free may be taken before the server binds it; a few
	// tries make that race harmless.
	for range 5 {
		if s.port, err = freePort(); err != nil {
			break
		}
		if err = s.Start(); err == nil {
			return s, nil
		}
	}
	os.RemoveAll(dir)
	return nil, err
}

const (
	dirPrefix = "caddy-oci-pg-"
	// ownerFile holds the PID of the test binary that started the server.
	ownerFile = "owner"
)

// sweepOrphans stops and removes the servers of test binaries that died
// without stopping theirs (killed by go test's timeout, say), so they do
// not pile up holding ports and memory.
func sweepOrphans(bin string) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || processAlive(pid) {
			continue
		}
		orphan := &Server{bin: bin, dir: dir, asPostgres: os.Geteuid() == 0}
		_ = orphan.Resume() // a paused one would never stop
		orphan.Close()
	}
}

func chownToPostgres(dir string) error {
	u, err := user.Lookup("postgres")
	if err != nil {
		return fmt.Errorf("running PostgreSQL as root needs the postgres user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return os.Chown(dir, uid, gid)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *Server) dataDir() string { return filepath.Join(s.dir, "data") }

// run runs one of PostgreSQL's programs, as the postgres user when we are
// root.
func (s *Server) run(prog string, args ...string) ([]byte, error) {
	path := filepath.Join(s.bin, prog)
	var cmd *exec.Cmd
	if s.asPostgres {
		cmd = exec.Command("runuser", append([]string{"-u", "postgres", "--", path}, args...)...)
	} else {
		cmd = exec.Command(path, args...)
	}
	cmd.Dir = s.dir
	return cmd.CombinedOutput()
}

// Start starts the server (again, after Kill or Stop) on its port, and
// returns once it accepts connections.
func (s *Server) Start() error {
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=200", s.port, s.dir)
	out, err := s.run("pg_ctl", "-D", s.dataDir(), "-l", filepath.Join(s.dir, "log"), "-w", "-t", "60", "-o", opts, "start")
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(s.dir, "log"))
		return fmt.Errorf("pg_ctl start: %w\n%s\n%s", err, out, tail(log, 2000))
	}
	return nil
}

// Kill stops the server at once, as a crash would: clients' connections
// break mid-use.
func (s *Server) Kill() error { return s.stop("immediate") }

// Stop shuts the server down cleanly.
func (s *Server) Stop() error { return s.stop("fast") }

func (s *Server) stop(mode string) error {
	out, err := s.run("pg_ctl", "-D", s.dataDir(), "-m", mode, "-w", "stop")
	if err != nil {
		return fmt.Errorf("pg_ctl stop -m %s: %w\n%s", mode, err, out)
	}
	return nil
}

// Close stops the server, if it runs, and removes its folder.
func (s *Server) Close() {
	if _, err := os.Stat(filepath.Join(s.dataDir(), "postmaster.pid")); err == nil {
		_ = s.Kill()
	}
	os.RemoveAll(s.dir)
}

// DSN is the connection string of database db over TCP.
func (s *Server) DSN(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.port, db)
}

var dbSeq atomic.Int64

// NewDatabase creates an empty database for t and returns its DSN. The
// database is dropped when t ends.
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("t%d_%d", os.Getpid(), dbSeq.Add(1))
	if err := s.exec(fmt.Sprintf("CREATE DATABASE %s", name)); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		// WITH (FORCE) ends sessions a test left open.
		if err := s.exec(fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", name)); err != nil {
			t.Logf("pgtest: %v", err)
		}
	})
	return s.DSN(name)
}

// exec runs one statement in the postgres database.
func (s *Server) exec(sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	return nil
}

var shared struct {
	once sync.Once
	srv  *Server
	err  error
}

// Shared returns the test binary's server, starting it on first use.
// Main stops it.
func Shared(t testing.TB) *Server {
	t.Helper()
	shared.once.Do(func() { shared.srv, shared.err = start("") })
	if errors.Is(shared.err, errNotInstalled) {
		skipOrFail(t, shared.err)
	}
	if shared.err != nil {
		t.Fatalf("pgtest: %v", shared.err)
	}
	return shared.srv
}

// NewDatabase is Shared(t).NewDatabase(t).
func NewDatabase(t testing.TB) string {
	t.Helper()
	return Shared(t).NewDatabase(t)
}

// Main runs a test binary's tests and then stops the shared server:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
func Main(m *testing.M) int {
	code := m.Run()
	if shared.srv != nil {
		shared.srv.Close()
	}
	return code
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}
