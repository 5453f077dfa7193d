package e2e

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// server is one caddy process serving a copy of Caddyfile.example.
type server struct {
	t       testing.TB
	config  string // path of the Caddyfile it runs
	addr    string // host:port of the registry
	admin   string // host:port of the admin API
	dataDir string
	cmd     *exec.Cmd
	out     *syncBuffer
	done    chan struct{} // closed when the process has exited
	// readyStatus is what GET /v2/ answers once the server is up: 200,
	// or 401 when auth refuses anonymous callers there. 0 means 200.
	readyStatus int
	adapter     string   // config adapter of `caddy run`; "" means caddyfile
	env         []string // added to the process's environment
	// nofile, if set, is the process's limit of open files (soft and
	// hard: Go raises a soft limit to the hard one at start).
	nofile int
}

// syncBuffer collects the process's output for failure reports.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// exampleConfig writes Caddyfile.example to a temp file with only its port,
// admin port and storage folder changed, so tests run what users run.
func exampleConfig(t *testing.T, dataDir string) (path, addr, admin string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "Caddyfile.example"))
	if err != nil {
		t.Fatal(err)
	}
	port, adminPort := strconv.Itoa(freePort(t)), strconv.Itoa(freePort(t))
	cfg := string(b)
	for _, r := range []struct{ old, new string }{
		{"http://:5000", "http://:" + port},
		{"admin localhost:2019", "admin localhost:" + adminPort},
		{"storage ./registry-data", "storage " + strconv.Quote(dataDir)},
	} {
		if !strings.Contains(cfg, r.old) {
			t.Fatalf("Caddyfile.example no longer contains %q; update the e2e tests with it", r.old)
		}
		cfg = strings.ReplaceAll(cfg, r.old, r.new)
	}
	path = filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, "127.0.0.1:" + port, "localhost:" + adminPort
}

// newServer starts caddy on a fresh copy of the example config whose
// storage is dataDir, and waits until it serves /v2/.
func newServer(t *testing.T, dataDir string) *server {
	t.Helper()
	needBinary(t)
	config, addr, admin := exampleConfig(t, dataDir)
	s := &server{t: t, config: config, addr: addr, admin: admin, dataDir: dataDir}
	s.start()
	return s
}

// start runs the process on s.config and waits for readiness.
func (s *server) start() {
	t := s.t
	t.Helper()
	s.out = new(syncBuffer)
	s.done = make(chan struct{})
	adapter := s.adapter
	if adapter == "" {
		adapter = "caddyfile"
	}
	s.cmd = exec.Command(caddyBin, "run", "--config", s.config, "--adapter", adapter)
	if s.nofile > 0 {
		// The shell sets the limit and becomes caddy (same pid).
		s.cmd = exec.Command("/bin/sh", append([]string{"-c", "ulimit -n " + strconv.Itoa(s.nofile) + ` && exec "$0" "$@"`}, s.cmd.Args...)...)
	}
	s.cmd.Env = append(os.Environ(), s.env...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done, out := s.done, s.out
	go func() {
		_ = s.cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		s.stopProcess(s.cmd, done)
		if t.Failed() {
			t.Logf("caddy output:\n%s", out.String())
		}
	})
	s.waitReady()
}

func (s *server) stopProcess(cmd *exec.Cmd, done chan struct{}) {
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Kill()
	<-done
}

// kill ends the process with SIGKILL, as a crash would.
func (s *server) kill() {
	s.stopProcess(s.cmd, s.done)
}

// waitReady polls GET /v2/ until it answers s.readyStatus, the process
// exits, or a deadline passes.
func (s *server) waitReady() {
	t := s.t
	t.Helper()
	want := s.readyStatus
	if want == 0 {
		want = http.StatusOK
	}
	deadline := time.Now().Add(60 * time.Second)
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		resp, err := client.Get(s.url("/v2/"))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == want {
				return
			}
		}
		select {
		case <-s.done:
			t.Fatalf("caddy exited before serving /v2/:\n%s", s.out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("caddy not ready after 60s (last: %v)", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *server) url(path string) string { return "http://" + s.addr + path }

// run runs a client command with a deadline and returns its combined
// output, failing the test on error.
func run(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// siteServer starts caddy on a Caddyfile whose one site, on a free port of
// 127.0.0.1, holds site (the oci_registry block and anything beside it),
// and waits until GET /v2/ answers ready (0: 200). dataDir is the storage
// folder the caller named in site.
func siteServer(t testing.TB, dataDir, site string, ready int) *server {
	t.Helper()
	return siteServerOn(t, freePort(t), dataDir, site, ready)
}

// siteServerOn is siteServer on a port the caller chose (to name it in
// the site, as external_url does).
func siteServerOn(t testing.TB, registryPort int, dataDir, site string, ready int) *server {
	t.Helper()
	return siteServerEnv(t, registryPort, dataDir, site, ready, nil)
}

// siteServerEnv is siteServerOn with env added to the process's
// environment (TMPDIR, say).
func siteServerEnv(t testing.TB, registryPort int, dataDir, site string, ready int, env []string) *server {
	t.Helper()
	needBinary(t)
	port, adminPort := strconv.Itoa(registryPort), strconv.Itoa(freePort(t))
	cfg := "{\n\tadmin localhost:" + adminPort + "\n\tauto_https off\n}\n\n" +
		"http://:" + port + " {\n\tbind 127.0.0.1\n" + site + "\n}\n"
	config := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, config: config, addr: "127.0.0.1:" + port, admin: "localhost:" + adminPort,
		dataDir: dataDir, readyStatus: ready, env: env}
	s.start()
	return s
}

// localhostAddr is s's address with localhost for 127.0.0.1, as users
// write it; clients fall back to plain HTTP for localhost.
func (s *server) localhostAddr() string {
	return "localhost:" + strings.TrimPrefix(s.addr, "127.0.0.1:")
}

// logGoroutines logs the stacks of the process's goroutines that run the
// project's code (from the admin API's pprof), so a drill that finds a
// request hung says where, in CI's output too.
func (s *server) logGoroutines(t testing.TB) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + s.admin + "/debug/pprof/goroutine?debug=2")
	if err != nil {
		t.Logf("goroutines of %s: %v", s.addr, err)
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var ours []string
	for _, g := range strings.Split(string(b), "\n\n") {
		if strings.Contains(g, "caddy-oci/") {
			ours = append(ours, g)
		}
	}
	t.Logf("goroutines of %s running caddy-oci code (%d):\n%s", s.addr, len(ours), strings.Join(ours, "\n\n"))
}
