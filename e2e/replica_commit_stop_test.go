//go:build linux

package e2e

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/internal/procstop"
)

// TestReplicaStoppedMidCommit: TestReplicaKillMidCommit with the replica
// stopped (SIGSTOP) 0-40 ms into the closing PUT instead of killed, as a
// frozen VM or a long pause stops it: the client sends the PUT again to
// the other replica, which waits out the stopped one's session lease and
// commits; then the stopped replica is woken (SIGCONT) and finishes
// whatever it was doing with a session another replica has committed.
// Nothing it does then may take the committed blob (every blob stays
// whole through both replicas), and its answer to the first PUT, whose
// lease ended under it, is a 503 to send again, or what it had done
// before the stop (201), never a 500. (Before: 500 "context canceled"
// in 4 of 5 stops mid-commit; the blob held.)
func TestReplicaStoppedMidCommit(t *testing.T) {
	c := startCluster(t, 2, "", nil)
	outcomes := map[string]int{}
	for round := range 2 {
		a, b := c.replicas[round%2], c.replicas[(round+1)%2]
		repo := fmt.Sprintf("commitstop/r%d", round)
		data := randomBytes(t, 12<<20+round)
		d := blobDigest(data)
		put := chunkedUntilCommit(t, a, repo, data)

		first := make(chan int, 1)
		go func() { first <- commitStatus(a.url(put)) }()
		time.Sleep(time.Duration(rand.IntN(40)) * time.Millisecond)
		if err := procstop.Stop(a.cmd.Process.Pid); err != nil {
			t.Fatal(err)
		}
		retry := 0
		deadline := time.Now().Add(45 * time.Second)
		for {
			retry = commitStatus(b.url(put))
			again := retry == http.StatusRequestedRangeNotSatisfiable || retry == http.StatusServiceUnavailable
			if !again || time.Now().After(deadline) {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		if retry != http.StatusCreated && retry != http.StatusNotFound {
			t.Errorf("round %d: the PUT sent again to the other replica: %d", round, retry)
		}
		getBlob(t, b, repo, d, data)
		if err := a.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		st := <-first
		outcomes[fmt.Sprintf("retry %d, woken replica's answer %d", retry, st)]++
		if st >= 500 && st != http.StatusServiceUnavailable {
			t.Errorf("round %d: the woken replica answered the first PUT %d", round, st)
		}
		// Whatever the woken replica did after its answer (a cleanup
		// in the background) is done within its request's bounds; look
		// again through both replicas, and once more after a while.
		for range 2 {
			for _, s := range c.replicas {
				getBlob(t, s, repo, d, data)
			}
			time.Sleep(3 * time.Second)
		}
	}
	t.Logf("commits stopped midway: %v", outcomes)
}
