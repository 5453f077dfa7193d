package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestSignaturePolicyRealSigners: the real cosign and notation CLIs sign
// images pushed to caddy (cosign with a generated key pair and no
// transparency log, notation with its test certificate); under
// require_signature with that key and certificate, crane and podman pull
// the signed images, cosign verifies through caddy (its signature
// manifest and blobs stay readable), and an unsigned image, or a layer of
// it asked for by digest, is refused with the policy's DENIED error.
func TestSignaturePolicyRealSigners(t *testing.T) {
	cosign := tool(t, "cosign")
	notation := tool(t, "notation")
	crane := tool(t, "crane")
	podman := tool(t, "podman")
	dir := t.TempDir()

	// The signers' own homes: nothing read from or written to root's.
	env := []string{"HOME=" + dir, "XDG_CONFIG_HOME=" + filepath.Join(dir, "config"),
		"COSIGN_PASSWORD=", "COSIGN_YES=true", "DOCKER_CONFIG=" + filepath.Join(dir, "docker")}
	keys := filepath.Join(dir, "keys")
	if err := os.MkdirAll(keys, 0o700); err != nil {
		t.Fatal(err)
	}
	run(t, env, "sh", "-c", "cd "+strconv.Quote(keys)+" && "+strconv.Quote(cosign)+" generate-key-pair")
	cosignKey, cosignPub := filepath.Join(keys, "cosign.key"), filepath.Join(keys, "cosign.pub")
	run(t, env, notation, "cert", "generate-test", "--default", "caddy-oci.test")
	notationCert := filepath.Join(dir, "config", "notation", "localkeys", "caddy-oci.test.crt")
	if _, err := os.Stat(notationCert); err != nil {
		t.Fatalf("notation's test certificate: %v", err)
	}

	dataDir := filepath.Join(dir, "data")
	s := siteServer(t, dataDir, fmt.Sprintf(`	oci_registry {
		storage %s
		require_signature team/** {
			cosign_key %s
			notation_cert %s
		}
	}`, strconv.Quote(dataDir), strconv.Quote(cosignPub), strconv.Quote(notationCert)), 0)
	host := s.localhostAddr()

	var unsignedLayer string
	push := func(tag string) string {
		t.Helper()
		img := ociImage(t)
		ls, err := img.Layers()
		if err != nil {
			t.Fatal(err)
		}
		ld, _ := ls[0].Digest()
		unsignedLayer = ld.String() // the last pushed is the unsigned one
		writeImage(t, host+"/team/app:"+tag, img)
		d, _ := img.Digest()
		return d.String()
	}
	cosigned, notarised := push("cosign"), push("notation")
	push("unsigned")
	// Until signed, nothing of them is served: the manifest refusal is
	// what cosign and notation themselves meet when they resolve a tag,
	// so they sign by digest (as both recommend).
	out := runFail(t, nil, crane, "manifest", "--insecure", host+"/team/app:cosign")
	if !strings.Contains(out, "refused by signature policy team/**") {
		t.Fatalf("before signing: %s", out)
	}

	run(t, env, cosign, "sign", "--key", cosignKey, "--tlog-upload=false", "--allow-insecure-registry", "--allow-http-registry",
		host+"/team/app@"+cosigned)
	run(t, env, notation, "sign", "--insecure-registry", "--key", "caddy-oci.test", host+"/team/app@"+notarised)

	for _, tag := range []string{"cosign", "notation"} {
		ref := host + "/team/app:" + tag
		run(t, nil, crane, "pull", "--insecure", ref, filepath.Join(dir, tag+".tar"))
		podmanPull(t, nil, ref, "--tls-verify=false")
	}
	// cosign verify reads the signature back through caddy.
	run(t, env, cosign, "verify", "--key", cosignPub, "--insecure-ignore-tlog=true", "--allow-insecure-registry", "--allow-http-registry",
		host+"/team/app@"+cosigned)

	want := "refused by signature policy team/**"
	ref := host + "/team/app:unsigned"
	if out := runFail(t, nil, crane, "pull", "--insecure", ref, filepath.Join(dir, "unsigned.tar")); !strings.Contains(out, "DENIED") || !strings.Contains(out, want) {
		t.Errorf("crane pull of the unsigned image:\n%s", out)
	}
	if out := runFail(t, nil, podman, append(podmanBase(t), "pull", "--tls-verify=false", ref)...); !strings.Contains(out, want) {
		t.Errorf("podman pull of the unsigned image:\n%s", out)
	}
	// Its layer by digest: the same refusal.
	if out := runFail(t, nil, crane, "blob", "--insecure", host+"/team/app@"+unsignedLayer); !strings.Contains(out, "DENIED") {
		t.Errorf("crane blob of the unsigned image's layer:\n%s", out)
	}
}
