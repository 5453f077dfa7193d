//go:build linux

package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/internal/tmpfs"
)

// reloadWith posts s's Caddyfile with old replaced by new to its admin
// API, and returns the admin API's answer (the reload's outcome).
func reloadWith(t *testing.T, s *server, old, new string) (int, string) {
	t.Helper()
	b, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), old) {
		t.Fatalf("config has no %q", old)
	}
	cfg := strings.Replace(string(b), old, new, 1)
	if err := os.WriteFile(s.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	resp := do(t, http.MethodPost, "http://"+s.admin+"/load", []byte(cfg), map[string]string{
		"Content-Type": "text/caddyfile", "Cache-Control": "must-revalidate"})
	return resp.StatusCode, string(readAll(t, resp))
}

// TestReloadStorageFull: config reloads of a single node whose storage
// filesystem is full: one that keeps the storage (another option
// changed) and one that adds a site on a second, not yet open folder of
// the same full filesystem. Both reloads are taken; while full, pushes
// are refused with 507 and pulls of what was there are served; once space
// is freed, both sites take pushes without a restart.
func TestReloadStorageFull(t *testing.T) {
	needBinary(t)
	fs := tmpfs.Mount(t, 64*diskMiB)
	dataDir, otherDir := filepath.Join(fs, "data"), filepath.Join(fs, "other")
	s := siteServer(t, dataDir, "\toci_registry {\n\t\tstorage "+strconv.Quote(dataDir)+"\n\t\tstorage_reserve 4MiB\n\t\tgc_interval 1h\n\t}", 0)
	before := randomBytes(t, 1<<20)
	d := pushBlob(t, s, "full/app", before)

	filler := tmpfs.FillTo(t, fs, 256<<10)
	blob := randomBytes(t, 2<<20)
	push := func(s *server, addr string) *http.Response {
		return do(t, http.MethodPost, "http://"+addr+"/v2/full/app/blobs/uploads/?digest="+blobDigest(blob), blob,
			map[string]string{"Content-Type": "application/octet-stream"})
	}
	refusedFull(t, push(s, s.addr), "push before the reload")

	if st, body := reloadWith(t, s, "gc_interval 1h", "gc_interval 2h"); st != http.StatusOK {
		t.Fatalf("reload keeping the full storage: %d %s", st, body)
	}
	refusedFull(t, push(s, s.addr), "push after the reload")
	getBlob(t, s, "full/app", d, before)

	otherPort := freePort(t) // once s listens: not its port
	site := fmt.Sprintf("\nhttp://:%d {\n\tbind 127.0.0.1\n\toci_registry {\n\t\tstorage %s\n\t\tstorage_reserve 4MiB\n\t}\n}\n", otherPort, strconv.Quote(otherDir))
	b, _ := os.ReadFile(s.config)
	st, body := reloadWith(t, s, string(b), string(b)+site)
	t.Logf("reload adding a site on the full filesystem: %d %s", st, body)
	other := "127.0.0.1:" + strconv.Itoa(otherPort)
	if st == http.StatusOK {
		resp := do(t, http.MethodGet, "http://"+other+"/v2/", nil, nil)
		readAll(t, resp)
		t.Logf("the new site's /v2/ while full: %s", resp.Status)
		if resp.StatusCode >= 500 && resp.StatusCode != http.StatusServiceUnavailable && resp.StatusCode != http.StatusInsufficientStorage {
			t.Errorf("the new site's /v2/ while full: %s", resp.Status)
		}
	}
	s.alive("after reloads on a full storage")

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if resp := push(s, s.addr); resp.StatusCode != http.StatusCreated {
		t.Errorf("push after freeing space: %s %s", resp.Status, readAll(t, resp))
	}
	if st != http.StatusOK {
		// Refused while full: the same config is taken now.
		if st, body := reloadWith(t, s, "gc_interval 2h", "gc_interval 3h"); st != http.StatusOK {
			t.Fatalf("reload after freeing space: %d %s", st, body)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp := push(s, other)
		if resp.StatusCode == http.StatusCreated {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the site on the second folder after freeing space: %s %s", resp.Status, readAll(t, resp))
		}
		readAll(t, resp)
		time.Sleep(500 * time.Millisecond)
	}
	s.alive("after freeing space")
}

// TestReloadDatabaseDown: a replica's config is reloaded while
// PostgreSQL is down (stopped), or hung (every process SIGSTOPped). The
// new config is taken within seconds (Provision does not need the
// database), requests that need it answer 503 with Retry-After
// meanwhile, and once PostgreSQL is back the same process takes pushes.
func TestReloadDatabaseDown(t *testing.T) {
	crane := tool(t, "crane")
	for _, fault := range []string{"down", "hung"} {
		t.Run(fault, func(t *testing.T) {
			c := startCluster(t, 1, "\t\tgc_interval 1h\n", nil)
			r := c.replicas[0]
			before := pushImage(t, crane, r, "reload/app:before")
			down, up := c.pg.Stop, c.pg.Start
			if fault == "hung" {
				down, up = c.pg.Pause, c.pg.Resume
			}
			if err := down(); err != nil {
				t.Fatal(err)
			}
			back := false
			defer func() {
				if !back {
					_ = up()
				}
			}()
			start := time.Now()
			st, body := reloadWith(t, r, "gc_interval 1h", "gc_interval 2h")
			took := time.Since(start)
			t.Logf("reload with the database %s: %d in %s", fault, st, took.Round(time.Millisecond))
			if st != http.StatusOK || took > 15*time.Second {
				t.Errorf("reload with the database %s: %d %s after %s", fault, st, body, took)
			}
			resp := do(t, http.MethodPost, r.url("/v2/reload/app/blobs/uploads/"), nil, nil)
			if readAll(t, resp); resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
				t.Errorf("upload start with the database %s after the reload: %s", fault, resp.Status)
			}
			if err := up(); err != nil {
				t.Fatal(err)
			}
			back = true
			waitFor(t, 30*time.Second, "pushes after the database came back", func() bool {
				resp := do(t, http.MethodPost, r.url("/v2/reload/app/blobs/uploads/"), nil, nil)
				readAll(t, resp)
				return resp.StatusCode == http.StatusAccepted
			})
			after := pushImage(t, crane, r, "reload/app:after")
			pullAndVerify(t, before.ref, before.digest)
			pullAndVerify(t, after.ref, after.digest)
			r.alive("after a reload with the database " + fault)
		})
	}
}
