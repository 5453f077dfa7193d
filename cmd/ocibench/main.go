// Command ocibench measures a built caddy binary serving oci_registry as a
// whole process: it starts the binary on a temporary Caddyfile, pushes a
// blob monolithic and chunked, fetches it warm, measures small-manifest
// PUT and GET rates with concurrent clients, and reads the server's peak
// RSS. Every throughput is printed beside the limit measured in the same
// run on the same filesystem (sha256 + write + fsync for push, plain
// http.ServeFile of the same file for GET) and the target.
//
//	go build -o /tmp/caddy ./cmd/xcaddy-build
//	go run ./cmd/ocibench -caddy /tmp/caddy
//
// With -images N it instead grows the store: -clients clients push N
// images across N/10 repositories, and it reports the rate and the
// server's RSS (growth.go).
//
// It exits non-zero on errors only: a missed target is reported, not failed.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caddy-oci/caddy-oci/bench/benchclient"
)

const mib = 1 << 20

// Targets from the registry-core issue.
const (
	targetPush = 0.85
	targetGet  = 0.90
	targetRSS  = 100 // MiB
)

type options struct {
	caddy       string
	size        int64
	chunk       int64
	runs        int
	getRuns     int
	clients     int
	requests    int
	dir         string
	keep        bool
	pprofDir    string
	pprofSecs   int
	sizeText    string
	chunkText   string
	jsonOutput  bool
	global      string
	images      int
	layer       int64
	layerText   string
	registry    string
	cold        int
	wake        bool
	upstreamRTT time.Duration
	prefetch    bool
	coldImage   int
	gcStore     string
	gcSnapshot  string
	// registryLines: more lines for the oci_registry block (a mode's
	// mirror), not a flag.
	registryLines string
}

func main() {
	// Re-executed as the GET limit's file server (see startFileServer).
	if len(os.Args) == 3 && os.Args[1] == serveFileArg {
		if err := serveFile(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "ocibench file server:", err)
			os.Exit(1)
		}
		return
	}
	var o options
	flag.StringVar(&o.caddy, "caddy", "", "path to the caddy binary built from ./cmd/xcaddy-build (required)")
	flag.StringVar(&o.sizeText, "size", "1GiB", "blob size for push and GET (e.g. 1GiB, 256MiB)")
	flag.StringVar(&o.chunkText, "chunk", "64MiB", "PATCH size of the chunked push")
	flag.IntVar(&o.runs, "runs", 1, "pushes of each kind, each right after its own limit run; figures are totals over the runs")
	flag.IntVar(&o.getRuns, "get-runs", 5, "warm GETs, each alternating with a ServeFile limit GET; figures are totals")
	flag.IntVar(&o.clients, "clients", 16, "concurrent clients for the manifest rates")
	flag.IntVar(&o.requests, "requests", 5000, "requests for each manifest rate")
	flag.StringVar(&o.dir, "dir", "", "parent of the temporary folder holding storage, limit files and the Caddyfile (default $TMPDIR); pick the filesystem to measure")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary folder")
	flag.StringVar(&o.pprofDir, "pprof", "", "if set, enable Caddy's admin API on a free loopback port and save into this folder a CPU profile of the server for each blob phase (started with its first push or GET) and a heap profile at the end")
	flag.IntVar(&o.pprofSecs, "pprof-seconds", 5, "length of each CPU profile; about the time of one push")
	flag.StringVar(&o.global, "global", "", "extra lines for the Caddyfile's global options block, e.g. 'servers { timeouts { write_max_chunk 4MiB } }'")
	flag.BoolVar(&o.jsonOutput, "json", false, "print the figures as JSON instead of a table")
	flag.IntVar(&o.images, "images", 0, "store-growth mode: instead of the blob and manifest figures, push this many images (layer, config, manifest each) across images/10 repositories with -clients clients, then report the server's RSS (and save heap.pprof with -pprof)")
	flag.StringVar(&o.layerText, "layer", "4KiB", "layer size of each image in the store-growth mode")
	flag.StringVar(&o.registry, "registry", "", "store-growth mode: also run the same figures against this distribution (v3) registry binary, e.g. /root/go/bin/registry")
	flag.IntVar(&o.cold, "cold", 0, "cold-pull mode: with -registry as the upstream, time the first byte of this many cold blobs of -layer bytes through a mirror of it and straight from it")
	flag.BoolVar(&o.wake, "wake", false, "cold-pull mode: before each timed step, one request along the same path (a manifest upstream does not have), so that the processes on it have just run and what is timed is not the machine's wake-up after idle")
	flag.DurationVar(&o.upstreamRTT, "upstream-rtt", 0, "cold-pull mode: put upstream this round trip away from both the mirror and the direct client (a delaying proxy on loopback), as a registry on the internet is")
	flag.BoolVar(&o.prefetch, "prefetch", false, "cold-pull mode: the mirror prefetches (its `prefetch` setting): the manifest GET starts the fills of the image's config and layer")
	flag.IntVar(&o.coldImage, "cold-image", 0, "cold-pull mode: instead of single blobs, pull whole images of this many -layer layers (3 blobs at a time, as containerd does) straight, through a mirror and through a prefetching mirror; use with -upstream-rtt")
	flag.StringVar(&o.gcStore, "gc-store", "", "store-growth mode: push nothing; time only the GC passes on this existing store folder (a copy of one -gc-snapshot saved; it is changed), grown with the same -images and -layer")
	flag.StringVar(&o.gcSnapshot, "gc-snapshot", "", "store-growth mode: after the full GC pass, save a copy of the store into this new folder, for -gc-store runs that skip the growth and the full pass")
	flag.Parse()
	if err := o.check(); err != nil {
		fmt.Fprintln(os.Stderr, "ocibench:", err)
		flag.Usage()
		os.Exit(2)
	}
	if o.pprofDir != "" {
		if err := os.MkdirAll(o.pprofDir, 0o755); err != nil {
			fmt.Fprintln(os.Stderr, "ocibench:", err)
			os.Exit(1)
		}
	}
	runMode := run
	switch {
	case o.images > 0:
		runMode = runGrowth
	case o.cold > 0 && o.coldImage > 0:
		runMode = runColdImage
	case o.cold > 0:
		runMode = runCold
	}
	res, err := runMode(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ocibench:", err)
		os.Exit(1)
	}
	if o.jsonOutput {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(res)
		return
	}
	res.print(os.Stdout)
}

func (o *options) check() error {
	if o.caddy == "" {
		return errors.New("-caddy is required")
	}
	var err error
	if o.size, err = benchclient.ParseSize(o.sizeText); err != nil {
		return err
	}
	if o.chunk, err = benchclient.ParseSize(o.chunkText); err != nil {
		return err
	}
	if o.layer, err = benchclient.ParseSize(o.layerText); err != nil {
		return err
	}
	if o.cold > 0 && o.registry == "" {
		return errors.New("-cold needs -registry, the upstream")
	}
	if o.images < 0 || o.cold < 0 || o.layer < 1 {
		return errors.New("-images must not be negative and -layer must be positive")
	}
	if (o.gcStore != "" || o.gcSnapshot != "") && o.images == 0 {
		return errors.New("-gc-store and -gc-snapshot need -images")
	}
	if o.runs < 1 || o.getRuns < 1 || o.clients < 1 || o.requests < 1 {
		return errors.New("-runs, -get-runs, -clients and -requests must be positive")
	}
	return nil
}

// Row is one figure: what was measured, its limit (zero when none) and
// the target.
type Row struct {
	Name   string  `json:"name"`
	Value  float64 `json:"value"`
	Unit   string  `json:"unit"`
	Limit  float64 `json:"limit,omitempty"`
	Ratio  float64 `json:"ratio,omitempty"`
	Target string  `json:"target,omitempty"`
	Met    *bool   `json:"met,omitempty"`
}

// Result is everything one run measured.
type Result struct {
	Size    int64  `json:"size"`
	Chunk   int64  `json:"chunk"`
	Runs    int    `json:"runs"`
	GetRuns int    `json:"get_runs"`
	Clients int    `json:"clients"`
	Dir     string `json:"dir"`
	Images  int    `json:"images,omitempty"`
	Cold    int    `json:"cold,omitempty"`
	Rows    []Row  `json:"rows"`
	// Rounds: the cold mode's figures per round.
	Rounds []ColdRound `json:"rounds,omitempty"`
}

func throughputRow(name string, bytes int64, took, limit time.Duration, target float64) Row {
	v := float64(bytes) / took.Seconds() / 1e6
	l := float64(bytes) / limit.Seconds() / 1e6
	met := v/l >= target
	return Row{Name: name, Value: v, Unit: "MB/s", Limit: l, Ratio: v / l,
		Target: fmt.Sprintf(">= %.2fx limit", target), Met: &met}
}

func (r *Result) print(w io.Writer) {
	switch {
	case r.Cold > 0:
		fmt.Fprintf(w, "ocibench: %d cold pulls of a %s layer each way, upstream distribution on loopback, in %s\n", r.Cold, human(r.Size), r.Dir)
	case r.Images > 0:
		fmt.Fprintf(w, "ocibench: %d images, layer %s, %d clients, in %s\n", r.Images, human(r.Size), r.Clients, r.Dir)
	default:
		fmt.Fprintf(w, "ocibench: blob %s, chunk %s, %d push run(s), %d GET run(s), %d manifest clients, in %s\n",
			human(r.Size), human(r.Chunk), r.Runs, r.GetRuns, r.Clients, r.Dir)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "figure\tmeasured\tlimit\tratio\ttarget\t\t")
	for _, row := range r.Rows {
		limit, ratio := "-", "-"
		if row.Limit > 0 {
			limit = fmt.Sprintf("%.1f %s", row.Limit, row.Unit)
			ratio = fmt.Sprintf("%.3fx", row.Ratio)
		}
		verdict := ""
		if row.Met != nil {
			verdict = "ok"
			if !*row.Met {
				verdict = "MISSED"
			}
		}
		target := row.Target
		if target == "" {
			target = "-"
		}
		fmt.Fprintf(tw, "%s\t%.1f %s\t%s\t%s\t%s\t%s\t\n", row.Name, row.Value, row.Unit, limit, ratio, target, verdict)
	}
	tw.Flush()
}

func human(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d B", n)
}

const caddyfile = `{
	%s
	%s
	auto_https off
	persist_config off
	log {
		output stderr
		level WARN
	}
}

http://:%d {
	bind 127.0.0.1
	oci_registry {
		storage %s
		%s
	}
}
`

// server is the caddy process under test.
type server struct {
	cmd    *exec.Cmd
	exited chan error
	base   string
	admin  string // "" when the admin API is off
	log    string
}

func run(o options) (*Result, error) {
	tmp, err := os.MkdirTemp(o.dir, "ocibench-")
	if err != nil {
		return nil, err
	}
	if !o.keep {
		defer os.RemoveAll(tmp)
	}
	srv, err := startServer(o, tmp)
	if err != nil {
		return nil, err
	}
	defer srv.stop()
	idle, err := memory(srv.cmd.Process.Pid)
	if err != nil {
		return nil, err
	}

	res := &Result{Size: o.size, Chunk: o.chunk, Runs: o.runs, GetRuns: o.getRuns, Clients: o.clients, Dir: tmp}
	c := benchclient.NewClient(srv.base, o.clients)
	limitDir := filepath.Join(tmp, "limit")
	if err := os.Mkdir(limitDir, 0o755); err != nil {
		return nil, err
	}

	// Push: each run pushes a fresh blob right after the limit ran on the
	// same bytes (which also gives the digest the push declares).
	var firstDigest string
	for _, kind := range []struct {
		name  string
		seed  uint64
		push  func(digest string, body io.Reader) error
		pprof string
	}{
		{"push monolithic", 1 << 32, func(d string, body io.Reader) error {
			return c.PushMonolithic("bench/push", d, o.size, body)
		}, "push-monolithic"},
		{fmt.Sprintf("push chunked (%s PATCH)", human(o.chunk)), 2 << 32, func(d string, body io.Reader) error {
			return c.PushChunked("bench/push", d, o.size, o.chunk, body)
		}, "push-chunked"},
	} {
		var took, limit time.Duration
		prof := func() error { return nil }
		// Warm-up: frees o.size of pages for the first limit run (see the
		// note at benchclient.LimitPush).
		path, _, _, err := benchclient.LimitPush(limitDir, kind.seed, o.size)
		if err != nil {
			return nil, fmt.Errorf("limit: %w", err)
		}
		os.Remove(path)
		for i := range o.runs {
			seed := kind.seed + uint64(i)
			path, digest, l, err := benchclient.LimitPush(limitDir, seed, o.size)
			if err != nil {
				return nil, fmt.Errorf("limit: %w", err)
			}
			os.Remove(path)
			limit += l
			if i == 0 {
				// From the first push on: the server idles during the limit.
				prof = srv.profile(o, kind.pprof)
			}
			start := time.Now()
			if err := kind.push(digest, benchclient.NewBlob(seed, o.size)); err != nil {
				return nil, fmt.Errorf("%s: %w", kind.name, err)
			}
			took += time.Since(start)
			if err := benchclient.DropCache(blobPath(tmp, digest)); err != nil {
				return nil, fmt.Errorf("drop the pushed blob from the page cache: %w", err)
			}
			if firstDigest == "" {
				firstDigest = digest
			}
		}
		if err := prof(); err != nil {
			return nil, err
		}
		res.Rows = append(res.Rows, throughputRow(kind.name, o.size*int64(o.runs), took, limit, targetPush))
	}

	row, err := measureGet(o, srv, c, tmp, firstDigest)
	if err != nil {
		return nil, err
	}
	res.Rows = append(res.Rows, row)

	rows, err := measureManifests(o, c)
	if err != nil {
		return nil, err
	}
	res.Rows = append(res.Rows, rows...)

	if err := srv.heapProfile(o); err != nil {
		return nil, err
	}
	end, err := memory(srv.cmd.Process.Pid)
	if err != nil {
		return nil, err
	}
	met := end.HWM < targetRSS*mib
	res.Rows = append(res.Rows,
		Row{Name: "server peak RSS (VmHWM)", Value: float64(end.HWM) / mib, Unit: "MiB",
			Target: fmt.Sprintf("< %d MiB", targetRSS), Met: &met},
		memRow("server RSS when ready", idle),
		memRow("server RSS at end", end))
	return res, nil
}

// blobPath is where the store's documented layout puts a sha256 blob.
func blobPath(tmp, digest string) string {
	h := strings.TrimPrefix(digest, "sha256:")
	return filepath.Join(tmp, "store", "blobs", "sha256", h[:2], h)
}

// measureGet times warm GETs of the committed blob through the registry
// against http.ServeFile of the very same file, alternately. The file server
// is a process of its own, as caddy is, so both sides pay the same
// scheduling between client and server.
func measureGet(o options, srv *server, c *benchclient.Client, tmp, digest string) (Row, error) {
	path := blobPath(tmp, digest)
	if _, err := os.Stat(path); err != nil {
		return Row{}, fmt.Errorf("limit GET: the committed blob is not where the store's layout puts it: %w", err)
	}
	files, err := startFileServer(path)
	if err != nil {
		return Row{}, err
	}
	defer files.stop()
	fc := benchclient.NewClient(files.base, 4)
	blobURL := srv.base + "/v2/bench/push/blobs/" + digest
	// Warm the page cache and both connection pools.
	if err := c.Get(blobURL, nil, o.size); err != nil {
		return Row{}, err
	}
	if err := fc.Get(files.base+"/blob", nil, o.size); err != nil {
		return Row{}, err
	}
	var took, limit time.Duration
	prof := func() error { return nil }
	for i := range o.getRuns {
		start := time.Now()
		if err := fc.Get(files.base+"/blob", nil, o.size); err != nil {
			return Row{}, fmt.Errorf("limit GET: %w", err)
		}
		limit += time.Since(start)
		if i == 0 {
			prof = srv.profile(o, "get-warm")
		}
		start = time.Now()
		if err := c.Get(blobURL, nil, o.size); err != nil {
			return Row{}, err
		}
		took += time.Since(start)
	}
	if err := prof(); err != nil {
		return Row{}, err
	}
	return throughputRow("GET warm", o.size*int64(o.getRuns), took, limit, targetGet), nil
}

const ociManifest = "application/vnd.oci.image.manifest.v1+json"

// measureManifests pushes a config and a layer, then PUTs distinct small
// manifests under distinct tags and GETs one by tag, with o.clients
// concurrent clients.
func measureManifests(o options, c *benchclient.Client) ([]Row, error) {
	const repo = "bench/manifest"
	layer := make([]byte, 4096)
	benchclient.NewBlob(3<<32, int64(len(layer))).Read(layer)
	ld := digestOf(layer)
	config := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["` + ld + `"]}}`)
	cd := digestOf(config)
	for _, p := range []struct {
		d string
		b []byte
	}{{ld, layer}, {cd, config}} {
		if err := c.PushPostPut(repo, p.d, int64(len(p.b)), bytes.NewReader(p.b)); err != nil {
			return nil, err
		}
	}
	manifest := func(n int) []byte {
		return []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,`+
			`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},`+
			`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":%d}],`+
			`"annotations":{"org.opencontainers.image.revision":"%d"}}`,
			ociManifest, cd, len(config), ld, len(layer), n))
	}
	put, err := benchclient.RunConcurrent(o.requests, o.clients, func(i int) error {
		return c.PutManifest(repo, "t"+strconv.Itoa(i), ociManifest, manifest(i))
	})
	if err != nil {
		return nil, fmt.Errorf("manifest PUT: %w", err)
	}
	m := manifest(0)
	accept := map[string]string{"Accept": ociManifest}
	get, err := benchclient.RunConcurrent(o.requests, o.clients, func(int) error {
		return c.Get(c.Base()+"/v2/"+repo+"/manifests/t0", accept, int64(len(m)))
	})
	if err != nil {
		return nil, fmt.Errorf("manifest GET: %w", err)
	}
	return []Row{
		{Name: fmt.Sprintf("manifest PUT (%d clients, %d B)", o.clients, len(m)), Value: float64(o.requests) / put.Seconds(), Unit: "req/s"},
		{Name: fmt.Sprintf("manifest GET by tag (%d clients)", o.clients), Value: float64(o.requests) / get.Seconds(), Unit: "req/s"},
	}, nil
}

func digestOf(p []byte) string {
	s := sha256.Sum256(p)
	return "sha256:" + hex.EncodeToString(s[:])
}

// procMem is what /proc/<pid>/status says of a process's memory, in bytes.
type procMem struct {
	HWM, RSS, Anon, File int64
}

func memory(pid int) (procMem, error) {
	var m procMem
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return m, fmt.Errorf("server memory: %w", err)
	}
	fields := map[string]*int64{"VmHWM": &m.HWM, "VmRSS": &m.RSS, "RssAnon": &m.Anon, "RssFile": &m.File}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		dst := fields[k]
		if !ok || dst == nil {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		if err != nil {
			return m, fmt.Errorf("server memory: %s: %w", line, err)
		}
		*dst = kb << 10
	}
	if m.HWM == 0 {
		return m, errors.New("server memory: no VmHWM in /proc/<pid>/status")
	}
	return m, nil
}

func memRow(name string, m procMem) Row {
	return Row{Name: fmt.Sprintf("%s (anon %.1f, file %.1f MiB)", name, float64(m.Anon)/mib, float64(m.File)/mib),
		Value: float64(m.RSS) / mib, Unit: "MiB"}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func startServer(o options, tmp string) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	admin, adminAddr := "admin off", ""
	if o.pprofDir != "" || o.cold > 0 {
		// The cold mode reads the server's metrics (upstreamWait).
		ap, err := freePort()
		if err != nil {
			return nil, err
		}
		adminAddr = fmt.Sprintf("localhost:%d", ap)
		admin = "admin " + adminAddr
	}
	cf := filepath.Join(tmp, "Caddyfile")
	if err := os.WriteFile(cf, fmt.Appendf(nil, caddyfile, admin, o.global, port, filepath.Join(tmp, "store"), o.registryLines), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command(o.caddy, "run", "--config", cf, "--adapter", "caddyfile")
	// Keep Caddy's data and config folders inside tmp.
	cmd.Env = append(os.Environ(), "HOME="+tmp, "XDG_DATA_HOME="+filepath.Join(tmp, "data"), "XDG_CONFIG_HOME="+filepath.Join(tmp, "config"))
	s, err := startProcess(cmd, port, filepath.Join(tmp, "caddy.log"))
	if err != nil {
		return nil, err
	}
	if adminAddr != "" {
		s.admin = "http://" + adminAddr
	}
	return s, nil
}

// startProcess starts cmd, a registry serving plain HTTP on loopback
// port, with its output in logPath, and waits until it serves GET /v2/.
func startProcess(cmd *exec.Cmd, port int, logPath string) (*server, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	s := &server{cmd: cmd, exited: make(chan error, 1), base: fmt.Sprintf("http://127.0.0.1:%d", port), log: logPath}
	go func() { s.exited <- cmd.Wait(); logf.Close() }()
	if err := s.waitReady(30 * time.Second); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

// waitReady polls GET /v2/ until it answers 200.
func (s *server) waitReady(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		resp, err := http.Get(s.base + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		select {
		case werr := <-s.exited:
			s.exited <- werr
			return fmt.Errorf("caddy exited before serving (%v):\n%s", werr, s.logTail())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("caddy not serving GET /v2/ after %s: %v\n%s", limit, err, s.logTail())
		}
	}
}

func (s *server) logTail() string {
	b, _ := os.ReadFile(s.log)
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return string(b)
}

// stop asks caddy to quit and kills it if it has not after 10 s.
func (s *server) stop() {
	s.cmd.Process.Signal(os.Interrupt)
	select {
	case werr := <-s.exited:
		s.exited <- werr
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		s.exited <- <-s.exited
	}
}

// profile starts a CPU profile of the server into o.pprofDir/<name>.pprof
// when profiling is on; the returned func waits for it and reports errors.
func (s *server) profile(o options, name string) func() error {
	if s.admin == "" {
		return func() error { return nil }
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(o.pprofSecs+30)*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", s.admin, o.pprofSecs), nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- err
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			done <- fmt.Errorf("pprof %s: status %d", name, resp.StatusCode)
			return
		}
		f, err := os.Create(filepath.Join(o.pprofDir, name+".pprof"))
		if err != nil {
			done <- err
			return
		}
		_, err = io.Copy(f, resp.Body)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		done <- err
	}()
	return func() error {
		if err := <-done; err != nil {
			return fmt.Errorf("cpu profile %s: %w", name, err)
		}
		return nil
	}
}

// heapProfile saves the server's heap profile (in-use and allocated
// memory since start) into o.pprofDir/heap.pprof when profiling is on.
func (s *server) heapProfile(o options) error {
	if s.admin == "" {
		return nil
	}
	return s.saveHeapProfile(filepath.Join(o.pprofDir, "heap.pprof"))
}

func (s *server) saveHeapProfile(path string) error {
	resp, err := http.Get(s.admin + "/debug/pprof/heap")
	if err != nil {
		return fmt.Errorf("heap profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("heap profile: status %d", resp.StatusCode)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("heap profile: %w", err)
	}
	return f.Close()
}

const serveFileArg = "-internal-serve-file"

// startFileServer runs this executable again as a plain net/http server of
// one file (http.ServeFile) on a free loopback port.
func startFileServer(path string) (*server, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, serveFileArg, path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("limit file server: %w", err)
	}
	s := &server{cmd: cmd, exited: make(chan error, 1)}
	addr := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		addr <- strings.TrimSpace(line)
		io.Copy(io.Discard, out)
	}()
	go func() { s.exited <- cmd.Wait() }()
	select {
	case a := <-addr:
		if a == "" {
			s.stop()
			return nil, errors.New("limit file server: no address")
		}
		s.base = "http://" + a
		return s, nil
	case <-time.After(10 * time.Second):
		s.stop()
		return nil, errors.New("limit file server: not listening after 10s")
	}
}

// serveFile is the file server's main: listen, print the address, serve.
func serveFile(path string) error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Println(l.Addr())
	return http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, path)
	}))
}
