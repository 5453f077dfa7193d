//go:build linux

package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/caddy-oci/caddy-oci/internal/tmpfs"
)

const diskMiB = 1 << 20

// alive fails the test when the caddy process has died (a SIGBUS from
// badger's memory-mapped files would end it).
func (s *server) alive(when string) {
	s.t.Helper()
	select {
	case <-s.done:
		s.t.Fatalf("caddy died %s: %v\n%s", when, s.cmd.ProcessState, s.out.String())
	default:
	}
}

// metricSample returns the value of the sample of name whose labels contain
// label, from the admin API's /metrics.
func (s *server) metricSample(t *testing.T, name, label string) string {
	t.Helper()
	resp, err := http.Get("http://" + s.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	re := regexp.MustCompile(`(?m)^` + name + `\{([^}]*)\} (\S+)$`)
	for _, m := range re.FindAllStringSubmatch(string(b), -1) {
		if strings.Contains(m[1], label) {
			return m[2]
		}
	}
	t.Fatalf("/metrics has no %s{%s}", name, label)
	return ""
}

// refusedFull checks a 507 with the STORAGE_FULL envelope.
func refusedFull(t *testing.T, resp *http.Response, what string) {
	t.Helper()
	if resp.StatusCode != http.StatusInsufficientStorage {
		t.Fatalf("%s: %s %q, want 507", what, resp.Status, readAll(t, resp))
	}
	if code := errorCode(t, resp); code != "STORAGE_FULL" {
		t.Errorf("%s: code %s, want STORAGE_FULL", what, code)
	}
}

// pullAndVerify pulls ref from s and checks the manifest's digest against
// want and every blob (config and layers) against its own.
func pullAndVerify(t *testing.T, ref, want string) {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(r)
	if err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}
	if d, err := img.Digest(); err != nil || d.String() != want {
		t.Fatalf("pull %s: digest %v (%v), want %s", ref, d, err, want)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, desc := range append([]v1.Descriptor{m.Config}, m.Layers...) {
		u := "http://" + r.Context().RegistryStr() + "/v2/" + r.Context().RepositoryStr() + "/blobs/" + desc.Digest.String()
		resp := do(t, http.MethodGet, u, nil, nil)
		b := readAll(t, resp)
		if resp.StatusCode != http.StatusOK || blobDigest(b) != desc.Digest.String() || int64(len(b)) != desc.Size {
			t.Fatalf("pull %s: blob %s: %s, %d bytes hashing to %s", ref, desc.Digest, resp.Status, len(b), blobDigest(b))
		}
	}
}

// streamPatch sends body as one PATCH with chunked transfer encoding (no
// length: the server learns the size only by reading).
func streamPatch(t *testing.T, u string, body []byte) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPatch, u, io.MultiReader(bytes.NewReader(body)))
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = -1
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
	if err != nil {
		t.Fatalf("PATCH %s: %v", u, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(b))
	return resp
}

func blobDigest(b []byte) string {
	h, _, err := v1.SHA256(bytes.NewReader(b))
	if err != nil {
		panic(err)
	}
	return h.String()
}

// TestFullDisk runs the binary on a 64 MiB tmpfs with a 16 MiB reserve and
// fills the filesystem around it: pushes (monolithic, a chunk stream that
// crosses the reserve, a manifest) and mirror cold misses get 507
// STORAGE_FULL, warm content is still served, the process never dies, and
// once a filler file is deleted everything works again without a restart.
func TestFullDisk(t *testing.T) {
	needBinary(t)
	const reserve = 16 * diskMiB
	fs := tmpfs.Mount(t, 64*diskMiB)
	dataDir := filepath.Join(fs, "data")

	up := newUpstream(t)
	warmImg, coldImg := ociImage(t), ociImage(t)
	warmDigest := up.push(t, "library/warm:v1", warmImg)
	coldDigest := up.push(t, "library/cold:v1", coldImg)

	s := siteServer(t, dataDir, fmt.Sprintf(`	oci_registry {
		storage %s
		storage_reserve %dMiB
		mirror docker.io {
			upstream %s
		}
	}`, strconv.Quote(dataDir), reserve/diskMiB, up.URL), 0)
	host := s.localhostAddr()
	storageLabel := `storage="` + dataDir + `"`

	// Before: a local image and a warm mirrored one.
	localImg := ociImage(t)
	localRef, err := name.ParseReference(host+"/team/app:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(localRef, localImg); err != nil {
		t.Fatal(err)
	}
	ld, _ := localImg.Digest()
	localDigest := ld.String()
	pullAndVerify(t, host+"/docker.io/library/warm:v1", warmDigest)
	if got := s.metricSample(t, "caddy_oci_storage_reserve_reached", storageLabel); got != "0" {
		t.Errorf("reserve_reached = %s with room to spare, want 0", got)
	}

	// 6 MiB above the reserve.
	filler := tmpfs.FillTo(t, fs, reserve+6*diskMiB)
	big := randomBytes(t, 12*diskMiB)
	bigDigest := blobDigest(big)

	t.Run("monolithic push", func(t *testing.T) {
		resp := do(t, http.MethodPost, s.url("/v2/team/big/blobs/uploads/?digest="+bigDigest), big, nil)
		refusedFull(t, resp, "monolithic push of 12 MiB with 6 MiB above the reserve")
		s.alive("after a refused monolithic push")
		headBlob(t, s, "team/big", bigDigest, http.StatusNotFound, "after the refused push")
	})

	var session string
	t.Run("chunk stream crossing the reserve", func(t *testing.T) {
		resp := do(t, http.MethodPost, s.url("/v2/team/big/blobs/uploads/"), nil, nil)
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("POST upload: %s", resp.Status)
		}
		session = location(t, s, resp).String()
		resp = do(t, http.MethodPatch, session, big[:diskMiB], map[string]string{"Content-Range": "0-" + strconv.Itoa(diskMiB-1)})
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("first chunk: %s", resp.Status)
		}
		session = location(t, s, resp).String()
		refusedFull(t, streamPatch(t, session, big[diskMiB:]), "chunk stream crossing the reserve")
		s.alive("after a refused chunk stream")
		resp = do(t, http.MethodGet, session, nil, nil)
		if resp.StatusCode != http.StatusNoContent || resp.Header.Get("Range") != "0-"+strconv.Itoa(diskMiB-1) {
			t.Errorf("session after the refused stream: %s Range %q, want 204 and the first chunk only",
				resp.Status, resp.Header.Get("Range"))
		}
		headBlob(t, s, "team/big", bigDigest, http.StatusNotFound, "after the refused stream")
		if n := uploadBytes(t, dataDir); n != diskMiB {
			t.Errorf("%d bytes in uploads/ and tmp/ after the refused stream, want the first chunk's %d", n, diskMiB)
		}
	})

	// Inside the reserve.
	os.Remove(filler)
	filler = tmpfs.FillTo(t, fs, reserve-diskMiB)
	newImg := ociImage(t)

	t.Run("manifest push", func(t *testing.T) {
		// A manifest whose blobs are all here: an OCI index of the local image.
		// (A new image's manifest would be refused for its missing layers
		// before its bytes are considered.)
		index := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":%d}]}`,
			localDigest, manifestSize(t, localImg)))
		resp := do(t, http.MethodPut, s.url("/v2/team/app/manifests/index"), index,
			map[string]string{"Content-Type": "application/vnd.oci.image.index.v1+json"})
		refusedFull(t, resp, "manifest push inside the reserve")
		s.alive("after a refused manifest push")
		resp = do(t, http.MethodGet, s.url("/v2/team/app/manifests/index"), nil, nil)
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("refused manifest's tag: %s, want 404", resp.Status)
		}
		// Metadata still changes: tagging a manifest the store has.
		localManifest, err := localImg.RawManifest()
		if err != nil {
			t.Fatal(err)
		}
		resp = do(t, http.MethodPut, s.url("/v2/team/app/manifests/also"), localManifest,
			map[string]string{"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
		if resp.StatusCode != http.StatusCreated {
			t.Errorf("tagging an existing manifest inside the reserve: %s %q", resp.Status, readAll(t, resp))
		}
	})

	t.Run("mirror", func(t *testing.T) {
		resp := do(t, http.MethodGet, s.url("/v2/docker.io/library/cold/manifests/v1"), nil,
			map[string]string{"Accept": "application/vnd.oci.image.manifest.v1+json"})
		refusedFull(t, resp, "mirror cold manifest")
		layers, err := coldImg.Layers()
		if err != nil {
			t.Fatal(err)
		}
		ld, _ := layers[0].Digest()
		resp = do(t, http.MethodGet, s.url("/v2/docker.io/library/cold/blobs/"+ld.String()), nil, nil)
		refusedFull(t, resp, "mirror cold blob")
		s.alive("after refused mirror fills")
		pullAndVerify(t, host+"/docker.io/library/warm:v1", warmDigest)
		pullAndVerify(t, host+"/team/app:v1", localDigest)
	})

	if got := s.metricSample(t, "caddy_oci_storage_reserve_reached", storageLabel); got != "1" {
		t.Errorf("reserve_reached = %s inside the reserve, want 1", got)
	}
	if !strings.Contains(s.out.String(), "storage reserve reached") {
		t.Error("no warning in the log when the reserve was reached")
	}

	// Another program takes the rest, to the last byte: metadata changes
	// are refused too (badger would fault on its memory maps), pulls go on.
	os.Remove(filler)
	filler = tmpfs.FillTo(t, fs, 0)
	t.Run("disk filled to the brim", func(t *testing.T) {
		resp := do(t, http.MethodPost, s.url("/v2/team/big/blobs/uploads/?digest="+blobDigest([]byte("x"))), []byte("x"), nil)
		refusedFull(t, resp, "monolithic push of one byte on a full disk")
		layers, err := localImg.Layers()
		if err != nil {
			t.Fatal(err)
		}
		ld, _ := layers[0].Digest()
		resp = do(t, http.MethodPost, s.url("/v2/team/copy/blobs/uploads/?mount="+ld.String()+"&from=team/app"), nil, nil)
		refusedFull(t, resp, "mounting on a full disk")
		refusedFull(t, streamPatch(t, session, big[diskMiB:]), "chunk stream on a full disk")
		localManifest, err := localImg.RawManifest()
		if err != nil {
			t.Fatal(err)
		}
		resp = do(t, http.MethodPut, s.url("/v2/team/app/manifests/brim"), localManifest,
			map[string]string{"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
		refusedFull(t, resp, "tagging on a full disk")
		resp = do(t, http.MethodPost, s.url("/v2/team/brim/blobs/uploads/"), nil, nil)
		refusedFull(t, resp, "starting an upload on a full disk")
		s.alive("on a full disk")
		pullAndVerify(t, host+"/docker.io/library/warm:v1", warmDigest)
		pullAndVerify(t, host+"/team/app:v1", localDigest)
		s.alive("after pulls on a full disk")
	})

	// Space freed: everything works again, same process.
	os.Remove(filler)
	t.Run("after freeing space", func(t *testing.T) {
		resp := do(t, http.MethodPatch, session, big[diskMiB:], map[string]string{"Content-Range": fmt.Sprintf("%d-%d", diskMiB, len(big)-1)})
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("resuming the session: %s %q", resp.Status, readAll(t, resp))
		}
		u := location(t, s, resp)
		q := u.Query()
		q.Set("digest", bigDigest)
		u.RawQuery = q.Encode()
		if resp := do(t, http.MethodPut, u.String(), nil, nil); resp.StatusCode != http.StatusCreated {
			t.Fatalf("finishing the session: %s %q", resp.Status, readAll(t, resp))
		}
		got := do(t, http.MethodGet, s.url("/v2/team/big/blobs/"+bigDigest), nil, nil)
		if b := readAll(t, got); got.StatusCode != http.StatusOK || !bytes.Equal(b, big) {
			t.Errorf("GET the resumed blob: %s, %d bytes", got.Status, len(b))
		}
		other := randomBytes(t, 8*diskMiB)
		resp = do(t, http.MethodPost, s.url("/v2/team/other/blobs/uploads/?digest="+blobDigest(other)), other, nil)
		if resp.StatusCode != http.StatusCreated {
			t.Errorf("monolithic push after freeing space: %s %q", resp.Status, readAll(t, resp))
		}
		newRef, err := name.ParseReference(host+"/team/app:v2", name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(newRef, newImg); err != nil {
			t.Fatalf("push after freeing space: %v", err)
		}
		nd, _ := newImg.Digest()
		pullAndVerify(t, host+"/team/app:v2", nd.String())
		pullAndVerify(t, host+"/docker.io/library/cold:v1", coldDigest)
		pullAndVerify(t, host+"/docker.io/library/warm:v1", warmDigest)
		pullAndVerify(t, host+"/team/app:v1", localDigest)
		s.alive("after freeing space")
	})
	if got := s.metricSample(t, "caddy_oci_storage_reserve_reached", storageLabel); got != "0" {
		t.Errorf("reserve_reached = %s after freeing space, want 0", got)
	}
	if !strings.Contains(s.out.String(), "storage has room again") {
		t.Error("no log line when the storage left its reserve")
	}
	// Refused requests left no repository behind.
	var catalog struct {
		Repositories []string `json:"repositories"`
	}
	getJSON(t, s.url("/v2/_catalog"), &catalog)
	for _, r := range catalog.Repositories {
		if r == "team/brim" || r == "team/copy" {
			t.Errorf("catalog %v lists %s, whose only requests were refused", catalog.Repositories, r)
		}
	}
}

func manifestSize(t *testing.T, img v1.Image) int64 {
	t.Helper()
	b, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	return int64(len(b))
}
