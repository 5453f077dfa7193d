package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/registry"
)

// cutAfter is the destination store that becomes unreachable after n
// blobs, as a bucket or database going away mid-run does.
type cutAfter struct {
	Dest
	n int
}

func (c *cutAfter) PutBlob(ctx context.Context, d cache.Digest, size int64, r io.Reader) (int64, error) {
	if c.n <= 0 {
		return 0, fmt.Errorf("%w: test cut the line", cache.ErrUnavailable)
	}
	c.n--
	return c.Dest.PutBlob(ctx, d, size, r)
}

// TestMigrateResumes: a run that loses its destination part way ends
// with an error at once; the next run copies only what is missing and
// verifies everything. Every kind of destination.
func TestMigrateResumes(t *testing.T) {
	for _, k := range destKinds {
		t.Run(k.name, func(t *testing.T) {
			dir := t.TempDir()
			fillFolder(t, dir)
			d := k.new(t, dir)
			src, err := OpenSource(dir, "")
			if err != nil {
				t.Fatal(err)
			}
			dst := d.open(t)
			to := dst.Target
			to.Store = &cutAfter{Dest: dst.Store, n: 5}
			// One worker, so exactly 5 blobs land before the cut.
			sum, err := Run(context.Background(), src, to, Options{Verify: true, Jobs: 1})
			src.Close()
			dst.Close()
			if !errors.Is(err, cache.ErrUnavailable) || sum.Blobs != 5 || sum.Manifests != 0 {
				t.Fatalf("cut run: %v\n%s", err, sum)
			}
			again, err := migrate(t, dir, d)
			t.Logf("resumed:\n%s", again)
			if err != nil || again.BlobsPresent != 5 || again.Blobs+5 != again.VerifiedBlobs || again.Manifests == 0 {
				t.Fatalf("resumed run: %v\n%s", err, again)
			}
		})
	}
}

// childEnv makes the test binary run `caddy oci migrate` with the
// arguments in it (separated by newlines) instead of the tests: a process
// a test can kill -9.
const childEnv = "CADDY_OCI_MIGRATE_TEST_CHILD"

// runChild is TestMain's half of childEnv.
func runChild() {
	out, err := runCmd(strings.Split(os.Getenv(childEnv), "\n")...)
	fmt.Print(out)
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	os.Exit(0)
}

// TestMigrateKilled: the command killed with SIGKILL while it copies
// blobs leaves a destination the next run completes, copying again at
// most the one blob it was writing, and verifying everything. Every kind
// of destination but the folder itself (whose blobs are there already).
func TestMigrateKilled(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range destKinds {
		if strings.HasPrefix(k.name, "same-folder") {
			continue
		}
		t.Run(k.name, func(t *testing.T) {
			dir := t.TempDir()
			const layers = 40
			fillBig(t, dir, layers)
			d := k.new(t, dir)
			args := append([]string{"--from", dir, "--jobs", "1", "--verify=false"}, d.flags(t)...)
			cmd := exec.Command(exe, "-test.run=^$")
			cmd.Env = append(os.Environ(), childEnv+"="+strings.Join(args, "\n"))
			var out strings.Builder
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			var atKill int
			deadline := time.Now().Add(2 * time.Minute)
			for {
				if n := len(d.blobKeys(t)); n >= 3 {
					if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
						t.Fatal(err)
					}
					<-exited
					atKill = len(d.blobKeys(t))
					break
				}
				select {
				case err := <-exited:
					t.Fatalf("the run ended before it was killed (%v):\n%s", err, out.String())
				default:
				}
				if time.Now().After(deadline) {
					t.Fatalf("no blob landed in 2 minutes:\n%s", out.String())
				}
				time.Sleep(5 * time.Millisecond)
			}
			t.Logf("killed with %d blobs at the destination:\n%s", atKill, out.String())
			if atKill >= layers {
				t.Fatalf("every blob landed before the kill: the test proves nothing")
			}

			sum, err := migrate(t, dir, d)
			t.Logf("after the kill:\n%s", sum)
			if err != nil {
				t.Fatalf("run after the kill: %v", err)
			}
			total := sum.Blobs + sum.BlobsPresent
			// The blob being written at the kill may be there unrecorded,
			// and is written again; none other is.
			if sum.BlobsPresent < atKill-1 || sum.VerifiedBlobs != total || sum.Manifests == 0 {
				t.Fatalf("after the kill: %d blobs there at the kill, %d found there, %d of %d verified", atKill, sum.BlobsPresent, sum.VerifiedBlobs, total)
			}
			again, err := migrate(t, dir, d)
			if err != nil || again.Copied() != 0 {
				t.Fatalf("third run: %v, copied %d\n%s", err, again.Copied(), again)
			}
		})
	}
}

// fillBig pushes one image of n 512 KiB layers into a folder.
func fillBig(t *testing.T, dir string, n int) {
	t.Helper()
	st, err := cache.Open(cache.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(registry.New(registry.Config{Store: st}))
	img, _ := random.Image(512<<10, int64(n))
	if err := remote.Write(mustRef(t, strings.TrimPrefix(srv.URL, "http://")+"/big:1"), img); err != nil {
		t.Fatal(err)
	}
	srv.Close()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
}
