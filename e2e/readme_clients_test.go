package e2e

// TestReadmeClients runs the README's "Clients and Kubernetes" section as
// written: each client's snippet is read from README.md, only the mirror's
// address and the /etc folders are changed, and the real client pulls
// through a caddy serving the section's own Caddyfile. The clients have no
// internet, so every pull that succeeds came through the mirror.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const clientsHeading = "## Clients and Kubernetes"

// readmeAddr is the mirror's address in the README's client snippets.
const readmeAddr = "mirror.example:5000"

// readmeSection returns the README's text under heading, up to the next
// heading of the same or a higher level, failing when it is missing.
// Lines in code blocks are not headings (a TOML comment starts with #).
func readmeSection(t *testing.T, heading string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "\n"+heading+"\n")
	if i < 0 {
		t.Fatalf("README has no heading %q", heading)
	}
	level := len(heading) - len(strings.TrimLeft(heading, "#"))
	var out []string
	inCode := false
	for _, line := range strings.Split(s[i+len(heading)+2:], "\n") {
		if strings.HasPrefix(line, "```") {
			inCode = !inCode
		}
		if !inCode {
			n := len(line) - len(strings.TrimLeft(line, "#"))
			if n > 0 && n <= level && strings.HasPrefix(line[n:], " ") {
				break
			}
		}
		out = append(out, line)
	}
	return strings.Join(out, "\n")
}

// codeBlocks returns the code blocks of kind lang in a README section.
func codeBlocks(section, lang string) []string {
	var blocks []string
	for {
		i := strings.Index(section, "```"+lang+"\n")
		if i < 0 {
			return blocks
		}
		section = section[i+len("```"+lang+"\n"):]
		end := strings.Index(section, "```")
		if end < 0 {
			return blocks
		}
		blocks = append(blocks, section[:end])
		section = section[end+3:]
	}
}

// fileBlocks returns the section's TOML blocks whose first line is a
// comment naming the file they go in, by that file name.
func fileBlocks(t *testing.T, section string) map[string][]string {
	t.Helper()
	files := map[string][]string{}
	for _, b := range codeBlocks(section, "toml") {
		first, rest, _ := strings.Cut(b, "\n")
		if name, ok := strings.CutPrefix(first, "# /"); ok {
			files["/"+name] = append(files["/"+name], rest)
		}
	}
	return files
}

// subsection returns a "### heading" part of the clients section.
func subsection(t *testing.T, heading string) string {
	t.Helper()
	return readmeSection(t, "### "+heading)
}

// oneBlock returns the only (or the first) block of kind lang in a
// subsection, failing when there is none.
func oneBlock(t *testing.T, sub, lang, heading string) string {
	t.Helper()
	bs := codeBlocks(sub, lang)
	if len(bs) == 0 {
		t.Fatalf("README's %q has no %s block", heading, lang)
	}
	return bs[0]
}

// shellLines runs the lines of a README sh block whose first word is cmd
// (a block may show several clients), as bin with the words after it,
// after r's replacements, with env added, in dir. Quotes, pipes and
// variables would need a shell; the snippets have none, and a line with
// one fails the test, so that no snippet runs differently from how it
// reads.
func shellLines(t *testing.T, block, cmd string, r *strings.Replacer, env []string, dir string, bin string) []string {
	t.Helper()
	var outs []string
	for _, line := range strings.Split(strings.TrimSpace(block), "\n") {
		if strings.ContainsAny(line, `"'|$;&<>\`+"`") {
			t.Fatalf("README line %q needs a shell; this test runs plain commands", line)
		}
		words := strings.Fields(r.Replace(line))
		if len(words) == 0 || words[0] != cmd {
			continue
		}
		outs = append(outs, runIn(t, dir, env, bin, words[1:]...))
	}
	if len(outs) == 0 {
		t.Fatalf("README's block has no %s line:\n%s", cmd, block)
	}
	return outs
}

// runIn is run, in the folder dir unless it is "".
func runIn(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// commandOutput runs a command that may fail, for tests of failures.
func commandOutput(env []string, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// containersEnv points podman, buildah and skopeo at a storage of their
// own (vfs, in a short temp folder: podman refuses a long runroot) and at
// settings that need no systemd, through the environment variables they
// read, so the README's command lines run as written.
func containersEnv(t *testing.T) []string {
	t.Helper()
	dir := shortTempDir(t)
	storage := fmt.Sprintf("[storage]\ndriver = \"vfs\"\ngraphroot = %q\nrunroot = %q\n", filepath.Join(dir, "root"), filepath.Join(dir, "run"))
	engine := "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n"
	for name, body := range map[string]string{"storage.conf": storage, "containers.conf": engine} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return []string{"CONTAINERS_STORAGE_CONF=" + filepath.Join(dir, "storage.conf"), "CONTAINERS_CONF=" + filepath.Join(dir, "containers.conf")}
}

// TestReadmeClients drives every client of the README's "Clients and
// Kubernetes" section through the section's mirror.
func TestReadmeClients(t *testing.T) {
	needBinary(t)
	section := readmeSection(t, clientsHeading)

	// The upstreams stand in for Docker Hub, ghcr.io and quay.io.
	hub, ghcr, quay := newUpstream(t), newUpstream(t), newUpstream(t)
	want := hub.push(t, "library/debian:bookworm", platformImage(t))
	wantOther := map[string]string{
		"ghcr.io": ghcr.push(t, "org/app:v1", platformImage(t)),
		"quay.io": quay.push(t, "org/app:v1", platformImage(t)),
	}

	// The section's Caddyfile, with its port, storage and (no internet)
	// upstreams changed.
	site := oneBlock(t, section[:strings.Index(section, "\n### ")], "caddyfile", clientsHeading)
	data := t.TempDir()
	port := strconv.Itoa(freePort(t))
	for _, r := range []struct{ old, new string }{
		{"http://:5000 {", "{\n\tadmin localhost:" + strconv.Itoa(freePort(t)) + "\n}\n\nhttp://:" + port + " {\n\tbind 127.0.0.1"},
		{"storage /var/lib/caddy-oci", "storage " + strconv.Quote(data)},
		{"mirror docker.io {", "mirror docker.io {\n\t\t\tupstream " + hub.URL},
		{"mirror ghcr.io\n", "mirror ghcr.io {\n\t\t\tupstream " + ghcr.URL + "\n\t\t}\n"},
		{"mirror quay.io\n", "mirror quay.io {\n\t\t\tupstream " + quay.URL + "\n\t\t}\n"},
	} {
		if !strings.Contains(site, r.old) {
			t.Fatalf("README's mirror for the clients no longer has %q; update this test:\n%s", r.old, site)
		}
		site = strings.Replace(site, r.old, r.new, 1)
	}
	config := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(config, []byte(site), 0o644); err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, config: config, addr: "127.0.0.1:" + port, dataDir: data}
	s.start()
	addr := s.localhostAddr()
	const ref = "docker.io/library/debian:bookworm"

	t.Run("containerd", func(t *testing.T) {
		needRoot(t)
		crictl := tool(t, "crictl")
		sub := subsection(t, "containerd, and Kubernetes nodes on it")
		cfg := oneBlock(t, sub, "toml", "containerd")
		if !strings.Contains(cfg, `config_path = "/etc/containerd/certs.d"`) {
			t.Fatalf("README's containerd config.toml lost config_path:\n%s", cfg)
		}
		files := fileBlocks(t, sub)
		forms := files["/etc/containerd/certs.d/docker.io/hosts.toml"]
		def := files["/etc/containerd/certs.d/_default/hosts.toml"]
		if len(forms) != 2 || len(def) != 1 {
			t.Fatalf("README's containerd section: %d docker.io hosts.toml and %d _default, want 2 and 1", len(forms), len(def))
		}
		checks := codeBlocks(sub, "sh")
		if len(checks) != 1 {
			t.Fatalf("README's containerd section has %d sh blocks, want 1", len(checks))
		}

		certs := t.TempDir()
		r := strings.NewReplacer(readmeAddr, addr, "/etc/containerd/certs.d", certs)
		c := startCRIContainerd(t, r.Replace(cfg))
		env := c.env()
		for i, hosts := range append(forms, def...) {
			if err := os.RemoveAll(certs); err != nil {
				t.Fatal(err)
			}
			host := "docker.io"
			if i == len(forms) {
				host = "_default"
			}
			writeHostsToml(t, certs, host, r.Replace(hosts))
			// crictl (the kubelet's way, through config_path), then
			// ctr (--hosts-dir), each in its own namespace for ctr.
			shellLines(t, checks[0], "crictl", r, env, "", crictl)
			shellLines(t, checks[0], "ctr", r, append(env, "CONTAINERD_NAMESPACE=form"+strconv.Itoa(i)), "", c.ctr)
			if got := c.criDigest(t, ref); got != want {
				t.Errorf("hosts.toml %d: crictl has %s, want %s", i, got, want)
			}
		}

		t.Run("without config_path", func(t *testing.T) {
			// What Debian ships: the CRI plugin ignores the folder and
			// asks Docker Hub itself, which is not reachable here.
			bare := startCRIContainerd(t, "")
			writeHostsToml(t, certs, "docker.io", r.Replace(forms[0]))
			out, err := commandOutput(bare.env(), crictl, "pull", "docker.io/library/debian:bookworm")
			if err == nil {
				t.Fatalf("crictl pull without config_path succeeded; the README says hosts.toml is ignored then:\n%s", out)
			}
			if !strings.Contains(out, "registry-1.docker.io") {
				t.Errorf("crictl pull without config_path failed, but not by asking Docker Hub:\n%s", out)
			}
		})
	})

	t.Run("k3s", func(t *testing.T) {
		needRoot(t)
		crictl := tool(t, "crictl")
		sub := subsection(t, "k3s and RKE2")
		mirrors := parseRegistriesYAML(t, oneBlock(t, sub, "yaml", "k3s and RKE2"))
		shown := fileBlocks(t, sub)["/var/lib/rancher/k3s/agent/etc/containerd/certs.d/docker.io/hosts.toml"]
		if len(shown) != 1 {
			t.Fatalf("README's k3s section shows %d generated docker.io hosts.toml, want 1", len(shown))
		}
		if got := k3sHostsToml(t, "docker.io", mirrors["docker.io"]); tomlLines(got) != tomlLines(shown[0]) {
			t.Errorf("k3s's rule gives for docker.io:\n%s\nthe README shows:\n%s", got, shown[0])
		}
		certs := t.TempDir()
		r := strings.NewReplacer(readmeAddr, addr)
		for host, endpoints := range mirrors {
			for i := range endpoints {
				endpoints[i] = r.Replace(endpoints[i])
			}
			dir := host
			if host == "*" {
				dir = "_default"
			}
			writeHostsToml(t, certs, dir, k3sHostsToml(t, host, endpoints))
		}
		// k3s sets config_path itself.
		c := startCRIContainerd(t, "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = "+strconv.Quote(certs)+"\n")
		refs := map[string]string{ref: want, "ghcr.io/org/app:v1": wantOther["ghcr.io"], "quay.io/org/app:v1": wantOther["quay.io"]}
		for _, host := range []string{"docker.io", "ghcr.io", "quay.io"} {
			if _, ok := mirrors[host]; !ok {
				t.Fatalf("README's registries.yaml no longer mirrors %s", host)
			}
		}
		for img, d := range refs {
			run(t, c.env(), crictl, "pull", img)
			if got := c.criDigest(t, img); got != d {
				t.Errorf("%s: crictl has %s, want %s", img, got, d)
			}
		}
	})

	t.Run("kind", func(t *testing.T) {
		needRoot(t)
		crictl := tool(t, "crictl")
		sub := subsection(t, "kind")
		patch := kindPatch(t, oneBlock(t, sub, "yaml", "kind"))
		hosts := fileBlocks(t, subsection(t, "containerd, and Kubernetes nodes on it"))["/etc/containerd/certs.d/docker.io/hosts.toml"]
		if len(hosts) == 0 {
			t.Fatal("README's containerd section lost its docker.io hosts.toml")
		}
		certs := t.TempDir()
		r := strings.NewReplacer(readmeAddr, addr, "/etc/containerd/certs.d", certs)
		writeHostsToml(t, certs, "docker.io", r.Replace(hosts[0]))
		c := startCRIContainerd(t, r.Replace(patch))
		run(t, c.env(), crictl, "pull", ref)
		if got := c.criDigest(t, ref); got != want {
			t.Errorf("crictl has %s, want %s", got, want)
		}
	})

	t.Run("podman buildah skopeo", func(t *testing.T) {
		sub := subsection(t, "podman, buildah and skopeo")
		confs := fileBlocks(t, sub)["/etc/containers/registries.conf"]
		if len(confs) != 1 {
			t.Fatalf("README's podman section has %d registries.conf, want 1", len(confs))
		}
		conf := filepath.Join(t.TempDir(), "registries.conf")
		if err := os.WriteFile(conf, []byte(strings.ReplaceAll(confs[0], readmeAddr, addr)), 0o644); err != nil {
			t.Fatal(err)
		}
		r := strings.NewReplacer(readmeAddr, addr, "/etc/containers/registries.conf", conf)
		block := oneBlock(t, sub, "sh", "podman, buildah and skopeo")
		for _, client := range []string{"podman", "buildah", "skopeo"} {
			t.Run(client, func(t *testing.T) {
				bin := tool(t, client)
				env := append(containersEnv(t), "CONTAINERS_REGISTRIES_CONF="+conf)
				out := strings.Join(shellLines(t, block, client, r, env, "", bin), "")
				if client == "skopeo" {
					if !strings.Contains(out, want) {
						t.Errorf("skopeo inspect does not show %s:\n%s", want, out)
					}
					return
				}
				got := strings.TrimSpace(run(t, env, bin, "images", "--digests", "--format", "{{.Digest}}", ref))
				if got != want {
					t.Errorf("%s has %q, want %s", client, got, want)
				}
			})
		}
	})

	t.Run("docker", func(t *testing.T) {
		needRoot(t)
		tool(t, "dockerd")
		sub := subsection(t, "Docker")
		daemonJSON := filepath.Join(t.TempDir(), "daemon.json")
		if err := os.WriteFile(daemonJSON, []byte(strings.ReplaceAll(oneBlock(t, sub, "json", "Docker"), readmeAddr, addr)), 0o644); err != nil {
			t.Fatal(err)
		}
		d := startDockerdArgs(t, startContainerd(t), "--config-file", daemonJSON)
		shellLines(t, oneBlock(t, sub, "sh", "Docker"), "docker", strings.NewReplacer(), []string{"DOCKER_HOST=" + d.host, "DOCKER_CONFIG=" + t.TempDir()}, "", d.docker)
		got := strings.TrimSpace(d.run(t, "image", "inspect", "--format", "{{index .RepoDigests 0}}", "debian:bookworm"))
		if _, digest, _ := strings.Cut(got, "@"); digest != want {
			t.Errorf("docker has %s, want %s", got, want)
		}
	})

	t.Run("regctl", func(t *testing.T) {
		regctl := tool(t, "regctl")
		outs := shellLines(t, oneBlock(t, subsection(t, "regctl"), "sh", "regctl"), "regctl",
			strings.NewReplacer(readmeAddr, addr), []string{"HOME=" + t.TempDir()}, "", regctl)
		if got := strings.TrimSpace(outs[len(outs)-1]); got != want {
			t.Errorf("regctl image digest printed %q, want %s", got, want)
		}
	})

	t.Run("crane", func(t *testing.T) {
		crane := tool(t, "crane")
		dir := t.TempDir()
		outs := shellLines(t, oneBlock(t, subsection(t, "crane"), "sh", "crane"), "crane",
			strings.NewReplacer(readmeAddr, addr), nil, dir, crane)
		if got := strings.TrimSpace(outs[0]); got != want {
			t.Errorf("crane digest printed %q, want %s", got, want)
		}
		if _, err := os.Stat(filepath.Join(dir, "debian.tar")); err != nil {
			t.Errorf("crane pull wrote no debian.tar: %v", err)
		}
	})
}

// tomlLines is a TOML text without comments and blank lines, for
// comparing what a rule generates with what the README shows.
func tomlLines(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimRight(l, " "); l != "" && !strings.HasPrefix(strings.TrimSpace(l), "#") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// parseRegistriesYAML reads the mirrors of a k3s registries.yaml in the
// shape the README shows (mirrors: <registry>: endpoint: - "<url>"), and
// fails on any other line, so the README cannot grow a setting this test
// silently skips.
func parseRegistriesYAML(t *testing.T, y string) map[string][]string {
	t.Helper()
	mirrors := map[string][]string{}
	var host string
	for _, line := range strings.Split(strings.TrimSpace(y), "\n") {
		trimmed := strings.TrimSpace(line)
		indent := len(line) - len(strings.TrimLeft(line, " "))
		switch {
		case indent == 0 && trimmed == "mirrors:":
		case indent == 2 && strings.HasSuffix(trimmed, ":"):
			host = strings.Trim(strings.TrimSuffix(trimmed, ":"), `"`)
			mirrors[host] = nil
		case indent == 4 && trimmed == "endpoint:" && host != "":
		case indent == 6 && strings.HasPrefix(trimmed, "- ") && host != "":
			mirrors[host] = append(mirrors[host], strings.Trim(strings.TrimPrefix(trimmed, "- "), `"`))
		default:
			t.Fatalf("README's registries.yaml has a line this test does not know: %q", line)
		}
	}
	return mirrors
}

// k3sHostsToml is the hosts.toml k3s writes for one mirrors.<registry>
// entry of registries.yaml (k3s's pkg/agent/containerd, read, not run):
// server is the registry ("registry-1.docker.io" for "docker.io", none
// for "*"); each endpoint becomes a [host], in order; an endpoint whose
// path is empty, "/" or "/v2" gets the path "/v2", any other path is kept
// with override_path.
func k3sHostsToml(t *testing.T, registry string, endpoints []string) string {
	t.Helper()
	var b strings.Builder
	if registry != "*" {
		host := registry
		if host == "docker.io" {
			host = "registry-1.docker.io"
		}
		fmt.Fprintf(&b, "server = %q\n", "https://"+host)
	}
	for _, e := range endpoints {
		if !strings.Contains(e, "://") {
			t.Fatalf("endpoint %q has no scheme; k3s's defaults for that are not modelled here", e)
		}
		u, err := url.Parse(e)
		if err != nil {
			t.Fatal(err)
		}
		if u.Host == "docker.io" {
			u.Host = "registry-1.docker.io"
		}
		override := false
		switch u.Path {
		case "", "/", "/v2":
			u.Path = "/v2"
		default:
			override = true
		}
		fmt.Fprintf(&b, "\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", u.String())
		if override {
			b.WriteString("  override_path = true\n")
		}
	}
	return b.String()
}

// kindPatch returns the TOML of the first containerdConfigPatches entry
// of a kind cluster config in the README's shape ("- |-" and the TOML
// indented under it).
func kindPatch(t *testing.T, y string) string {
	t.Helper()
	lines := strings.Split(y, "\n")
	for i, l := range lines {
		if strings.TrimSpace(l) != "containerdConfigPatches:" {
			continue
		}
		if i+1 >= len(lines) || strings.TrimSpace(lines[i+1]) != "- |-" {
			t.Fatalf("README's kind config: containerdConfigPatches is not followed by \"- |-\"")
		}
		dash := lines[i+1]
		indent := len(dash) - len(strings.TrimLeft(dash, " ")) + 2
		var patch []string
		for _, p := range lines[i+2:] {
			if len(p)-len(strings.TrimLeft(p, " ")) < indent || strings.TrimSpace(p) == "" {
				break
			}
			patch = append(patch, p[indent:])
		}
		return strings.Join(patch, "\n") + "\n"
	}
	t.Fatal("README's kind config has no containerdConfigPatches")
	return ""
}

// startCRIContainerd runs containerd with its CRI plugin (the one the
// kubelet and crictl talk to), a native snapshotter and every folder in a
// temp folder, with extra (a config.toml fragment from the README) added
// to the config. Without a version line in extra the config is version 2,
// as kind's and k3s's are.
func startCRIContainerd(t *testing.T, extra string) *containerd {
	t.Helper()
	needRoot(t)
	bin, ctr := tool(t, "containerd"), tool(t, "ctr")
	dir := shortTempDir(t)
	c := &containerd{sock: filepath.Join(dir, "sock"), ctr: ctr}
	// Top-level keys first: TOML puts a key after a table into the table.
	cfg := fmt.Sprintf("root = %q\nstate = %q\n", filepath.Join(dir, "root"), filepath.Join(dir, "state"))
	if !strings.Contains(extra, "version =") {
		cfg += "version = 2\n"
	}
	cfg += extra + fmt.Sprintf(`
[grpc]
  address = %q

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "native"

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = %q
  conf_dir = %q
`, c.sock, filepath.Join(dir, "cni-bin"), filepath.Join(dir, "cni-conf"))
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, bin, "--config", cfgPath)
	crictl := tool(t, "crictl")
	d.waitFor(t, "a CRI image service", func() bool {
		_, err := commandOutput(c.env(), crictl, "images")
		return err == nil
	})
	return c
}

// env is what crictl and ctr read to reach c: its socket, a namespace of
// the test's for ctr (crictl uses the CRI's k8s.io) and the native
// snapshotter, so the README's command lines need no flags added.
func (c *containerd) env() []string {
	ep := "unix://" + c.sock
	return []string{"CONTAINER_RUNTIME_ENDPOINT=" + ep, "IMAGE_SERVICE_ENDPOINT=" + ep,
		"CONTAINERD_ADDRESS=" + c.sock, "CONTAINERD_NAMESPACE=readme", "CONTAINERD_SNAPSHOTTER=native"}
}

// criDigest is the manifest digest the CRI plugin recorded for ref.
func (c *containerd) criDigest(t *testing.T, ref string) string {
	t.Helper()
	cmd := exec.Command(tool(t, "crictl"), "inspecti", "-o", "json", ref)
	cmd.Env = append(os.Environ(), c.env()...)
	out, err := cmd.Output() // stdout only: crictl warns on stderr
	if err != nil {
		t.Fatalf("crictl inspecti %s: %v", ref, err)
	}
	var img struct {
		Status struct {
			RepoDigests []string `json:"repoDigests"`
		} `json:"status"`
	}
	if err := json.Unmarshal(out, &img); err != nil {
		t.Fatalf("crictl inspecti %s: %v\n%s", ref, err, out)
	}
	for _, d := range img.Status.RepoDigests {
		if _, digest, ok := strings.Cut(d, "@"); ok {
			return digest
		}
	}
	t.Fatalf("crictl inspecti %s has no repo digest:\n%s", ref, out)
	return ""
}
