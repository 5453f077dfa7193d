package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// BenchmarkReplicasPull: 64 concurrent pulls of one 16 MiB layer through
// the load balancer, to 1 and to 3 replicas on versitygw + PostgreSQL,
// and the peak RSS of each replica process (VmHWM) after the run. Each
// iteration is one round of 64 pulls. On one machine the replicas share
// its cores with the load balancer, versitygw and PostgreSQL: read the
// 3-replica figure as what the cluster costs, not what more machines buy.
//
//	CADDY_OCI_E2E=1 go test -run '^$' -bench ReplicasPull -benchtime 5x ./e2e
func BenchmarkReplicasPull(b *testing.B) {
	for _, n := range []int{1, 3} {
		b.Run(strconv.Itoa(n)+"-replicas", func(b *testing.B) {
			c := startCluster(b, n, "", nil)
			img, err := random.Image(16<<20, 1)
			if err != nil {
				b.Fatal(err)
			}
			ref, _ := name.ParseReference(c.front.addr+"/bench/pull:v1", name.Insecure)
			if err := remote.Write(ref, img); err != nil {
				b.Fatal(err)
			}
			layers, _ := img.Layers()
			ld, _ := layers[0].Digest()
			size, _ := layers[0].Size()
			u := c.front.url("/v2/bench/pull/blobs/" + ld.String())
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
			const pulls = 64
			b.SetBytes(size * pulls)
			b.ResetTimer()
			for range b.N {
				var wg sync.WaitGroup
				errs := make(chan error, pulls)
				for range pulls {
					wg.Go(func() {
						resp, err := client.Get(u)
						if err != nil {
							errs <- err
							return
						}
						defer resp.Body.Close()
						n, err := io.Copy(io.Discard, resp.Body)
						if err == nil && (resp.StatusCode != http.StatusOK || n != size) {
							err = fmt.Errorf("%s, %d bytes of %d", resp.Status, n, size)
						}
						if err != nil {
							errs <- err
						}
					})
				}
				wg.Wait()
				close(errs)
				for err := range errs {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N*pulls)/b.Elapsed().Seconds(), "pulls/s")
			var peak float64
			for i, r := range c.replicas {
				rss := peakRSS(b, r.cmd.Process.Pid)
				b.Logf("replica %d: peak RSS %.0f MiB", i, rss)
				peak = max(peak, rss)
			}
			b.ReportMetric(peak, "max-replica-peak-RSS-MiB")
		})
	}
}

// peakRSS reads a process's VmHWM (peak resident set) in MiB.
func peakRSS(t testing.TB, pid int) float64 {
	t.Helper()
	return procStatusMiB(t, pid, "VmHWM")
}

// rssMiB reads a process's VmRSS in MiB.
func rssMiB(t testing.TB, pid int) float64 {
	t.Helper()
	return procStatusMiB(t, pid, "VmRSS")
}

// procStatusMiB reads a field in kB of a process's /proc status, in MiB.
func procStatusMiB(t testing.TB, pid int, field string) float64 {
	t.Helper()
	st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(st)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				t.Fatalf("%s %q", field, v)
			}
			return float64(kb) / 1024
		}
	}
	t.Fatalf("no %s in /proc status", field)
	return 0
}
