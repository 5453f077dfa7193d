package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestReloadAwayFromStorage: a reload to a config that no longer uses a
// storage folder (the registry moved to another folder, or its site was
// removed) must not close that folder's store under the requests the old
// config is still serving. Caddy lets those finish after the reload (the
// old servers' grace period runs on in the background), so a PATCH whose
// body was still arriving is stored and answered 202, not failed with a
// 500 from a closed database; and the data is there when the folder is
// served again.
func TestReloadAwayFromStorage(t *testing.T) {
	needBinary(t)
	dataDir, otherDir := t.TempDir(), t.TempDir()
	port, adminPort := strconv.Itoa(freePort(t)), strconv.Itoa(freePort(t))
	site := func(dir string) string {
		return "{\n\tadmin localhost:" + adminPort + "\n\tauto_https off\n\tgrace_period 1s\n}\n\n" +
			"http://:" + port + " {\n\tbind 127.0.0.1\n\toci_registry {\n\t\tstorage " + strconv.Quote(dir) + "\n\t}\n}\n"
	}
	config := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(config, []byte(site(dataDir)), 0o644); err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, config: config, addr: "127.0.0.1:" + port, admin: "localhost:" + adminPort, dataDir: dataDir}
	s.start()

	session := openSession(t, s, "team/app")
	stop, answer := tricklePatch(t, session, 20*time.Millisecond)
	defer stop()
	time.Sleep(300 * time.Millisecond)
	s.reload(t, []byte(site(otherDir)))
	time.Sleep(2 * time.Second) // past the old servers' grace period
	stop()
	select {
	case resp := <-answer:
		if resp == nil || resp.StatusCode != http.StatusAccepted {
			t.Errorf("the PATCH that was arriving during the reload: %v, want 202", resp)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the PATCH got no answer after its body ended")
	}
	select {
	case <-s.done:
		t.Fatal("caddy exited")
	default:
	}
	if out := s.out.String(); strings.Contains(out, "DB Closed") || strings.Contains(out, "Writes are blocked") {
		t.Errorf("a request used the store after it was closed")
	}

	// The folder served again: the session holds what the PATCH sent.
	s.reload(t, []byte(site(dataDir)))
	resp, err := quick(t, http.MethodGet, session, nil)
	if err != nil || resp.StatusCode != http.StatusNoContent || resp.Header.Get("Range") == "0-0" {
		t.Fatalf("the session after the reloads: %v %v, want 204 with the PATCH's bytes", resp, err)
	}
	t.Logf("session range after the reloads: %s", resp.Header.Get("Range"))
}
