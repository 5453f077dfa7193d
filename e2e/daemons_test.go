package e2e

// containerd and dockerd as the tests run them: as root, with every folder
// and socket in a temp folder, no CRI plugin, no networking of their own,
// so the only registry they can reach is the one under test.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// platformImage is ociImage with linux/<this arch> in its config: the
// daemons refuse a single-platform image for another (or no) platform.
func platformImage(t *testing.T) v1.Image {
	t.Helper()
	img := ociImage(t)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// needRoot skips (or, when mandatory, fails) unless the test runs as root,
// which the daemons need.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if mandatory() {
		t.Fatal("the containerd and dockerd tests need root, and CADDY_OCI_E2E=1")
	}
	t.Skip("the containerd and dockerd tests need root")
}

// daemon is a background process whose output is kept for failure reports.
type daemon struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

func startDaemon(t *testing.T, name string, args ...string) *daemon {
	t.Helper()
	d := &daemon{name: name, out: new(syncBuffer), done: make(chan struct{})}
	d.cmd = exec.Command(name, args...)
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = d.cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		_ = d.cmd.Process.Signal(os.Interrupt)
		select {
		case <-d.done:
		case <-time.After(10 * time.Second):
			_ = d.cmd.Process.Kill()
			<-d.done
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", name, d.out.String())
		}
	})
	return d
}

// waitFor polls ok until it holds, the daemon exits, or a minute passes.
func (d *daemon) waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !ok() {
		select {
		case <-d.done:
			t.Fatalf("%s exited before %s:\n%s", d.name, what, d.out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %s after a minute:\n%s", d.name, what, d.out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// shortTempDir is a temp folder with a short path: unix socket paths are
// limited to about 100 bytes, and t.TempDir's names are long.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "oci")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// containerd is a running containerd and the ctr binary that talks to it.
type containerd struct {
	sock string
	ctr  string
}

func startContainerd(t *testing.T) *containerd {
	t.Helper()
	needRoot(t)
	bin, ctr := tool(t, "containerd"), tool(t, "ctr")
	dir := shortTempDir(t)
	c := &containerd{sock: filepath.Join(dir, "sock"), ctr: ctr}
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.sock)
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, bin, "--config", cfgPath)
	d.waitFor(t, "a socket", func() bool {
		return exec.Command(ctr, "--address", c.sock, "version").Run() == nil
	})
	return c
}

// pull pulls ref in namespace ns with the registry hosts configured in
// hostsDir (containerd's hosts.toml layout), plus extra flags, and
// returns the digest containerd recorded for the image.
func (c *containerd) pull(t *testing.T, ns, hostsDir, ref string, extra ...string) string {
	t.Helper()
	args := append([]string{"--address", c.sock, "-n", ns, "images", "pull", "--hosts-dir", hostsDir}, extra...)
	run(t, nil, c.ctr, append(args, ref)...)
	out := run(t, nil, c.ctr, "--address", c.sock, "-n", ns, "images", "ls")
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == ref {
			return f[2]
		}
	}
	t.Fatalf("ctr images ls has no %s:\n%s", ref, out)
	return ""
}

// writeHostsToml writes <dir>/<host>/hosts.toml.
func writeHostsToml(t *testing.T, dir, host, body string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, host), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, host, "hosts.toml"), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// dockerd is a running Docker daemon with one registry mirror, and the
// docker client that talks to it.
type dockerd struct {
	host   string // DOCKER_HOST value
	docker string
}

// startDockerd runs dockerd on c's containerd with mirror as its only
// registry mirror.
func startDockerd(t *testing.T, c *containerd, mirror string) *dockerd {
	t.Helper()
	return startDockerdArgs(t, c, "--registry-mirror", "http://"+mirror, "--insecure-registry", mirror)
}

// startDockerdArgs runs dockerd on c's containerd with its folders in a
// temp folder, no networking of its own, and the registry settings in
// args (flags, or --config-file with a daemon.json).
func startDockerdArgs(t *testing.T, c *containerd, args ...string) *dockerd {
	t.Helper()
	bin, docker := tool(t, "dockerd"), tool(t, "docker")
	dir := shortTempDir(t)
	d := &dockerd{host: "unix://" + filepath.Join(dir, "sock"), docker: docker}
	p := startDaemon(t, bin, append([]string{
		"--data-root", filepath.Join(dir, "data"), "--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "pid"), "-H", d.host,
		"--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver", "vfs",
		"--containerd", c.sock}, args...)...)
	p.waitFor(t, "an API", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return exec.CommandContext(ctx, docker, "-H", d.host, "version").Run() == nil
	})
	return d
}

// run runs the docker client against d.
func (d *dockerd) run(t *testing.T, args ...string) string {
	t.Helper()
	home := t.TempDir()
	return run(t, []string{"DOCKER_CONFIG=" + home}, d.docker, append([]string{"-H", d.host}, args...)...)
}

// podmanBase is podman's global flags for a root-run podman with its own
// storage in a temp folder (podman refuses a runroot path longer than 50
// characters, so the folder is a short one).
func podmanBase(t *testing.T) []string {
	t.Helper()
	root := shortTempDir(t)
	return []string{"--storage-driver", "vfs", "--root", filepath.Join(root, "root"),
		"--runroot", filepath.Join(root, "run"), "--cgroup-manager=cgroupfs", "--events-backend=file"}
}

// podmanMirrorPull pulls ref, a docker.io name, with a podman of its own
// (podmanBase) whose registries.conf puts mirrorAddr/docker.io in front of
// docker.io, and returns the digest podman recorded for it. Podman tries
// the mirror first; with no internet the real docker.io fails, so a pull
// that succeeds came from the mirror.
func podmanMirrorPull(t *testing.T, env []string, mirrorAddr, ref string) string {
	t.Helper()
	conf := filepath.Join(t.TempDir(), "registries.conf")
	regConf := fmt.Sprintf(`[[registry]]
prefix = "docker.io"
location = "docker.io"

[[registry.mirror]]
location = "%s/docker.io"
insecure = true
`, mirrorAddr)
	if err := os.WriteFile(conf, []byte(regConf), 0o644); err != nil {
		t.Fatal(err)
	}
	return podmanPull(t, append(slices.Clone(env), "CONTAINERS_REGISTRIES_CONF="+conf), ref)
}

// podmanPull pulls ref with a podman of its own, with extra pull flags,
// and returns the digest podman recorded.
func podmanPull(t *testing.T, env []string, ref string, flags ...string) string {
	t.Helper()
	podman := tool(t, "podman")
	base := podmanBase(t)
	run(t, env, podman, append(append(append(base, "pull"), flags...), ref)...)
	return strings.TrimSpace(run(t, env, podman, append(base, "image", "inspect", "--format", "{{.Digest}}", ref)...))
}

// pull pulls ref with the docker client and returns the digest Docker
// recorded for it.
func (d *dockerd) pull(t *testing.T, ref string) string {
	t.Helper()
	d.run(t, "pull", ref)
	got := strings.TrimSpace(d.run(t, "image", "inspect", "--format", "{{index .RepoDigests 0}}", ref))
	_, digest, _ := strings.Cut(got, "@")
	return digest
}
