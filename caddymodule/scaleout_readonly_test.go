package caddymodule

import (
	"net/http"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// clusterGCPaused reports whether the one open cluster has its GC paused.
func clusterGCPaused(t *testing.T) bool {
	t.Helper()
	var paused []bool
	clusters.Range(func(_, value any) bool {
		c := value.(*sharedCluster)
		c.mu.Lock()
		if c.st != nil {
			paused = append(paused, c.st.GCPaused())
		}
		c.mu.Unlock()
		return true
	})
	if len(paused) != 1 {
		t.Fatalf("%d open clusters, want 1", len(paused))
	}
	return paused[0]
}

// read_only on S3 and PostgreSQL: the replica's cluster GC pauses while
// every site on the cluster is read-only (so a read-only replica never
// deletes, nor leads a pass), and runs while one site takes pushes; the
// switch takes a reload, as on a storage folder.
func TestScaleOutReadOnlyPausesGC(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	dsn := pgtest.NewDatabase(t)
	t.Setenv("TEST_S3_SECRET", srv.SecretKey)
	t.Setenv("TEST_DATABASE_URL", dsn)
	pub, internal := freeAddr(t), freeAddr(t)
	site := func(addr string, ro bool) string {
		flag := ""
		if ro {
			flag = "\n\t\tread_only"
		}
		return "http://" + addr + ` {
	oci_registry {
		storage s3 {
			bucket ` + bucket + `
			endpoint ` + srv.Endpoint + `
			region ` + srv.Region + `
			prefix reg/
			access_key ` + srv.AccessKey + `
			secret_key {env.TEST_S3_SECRET}
			path_style
		}
		metadata postgres {env.TEST_DATABASE_URL}
		gc_interval 1h` + flag + `
	}
}
`
	}
	load := func(roPub, roInternal bool) {
		t.Helper()
		cfg := adaptFront(t, "{\n\tadmin off\n\tlog {\n\t\tlevel ERROR\n\t}\n}\n"+site(pub, roPub)+site(internal, roInternal))
		if err := caddy.Load([]byte(cfg), true); err != nil {
			t.Fatal(err)
		}
	}
	load(true, true)
	t.Cleanup(func() { stopCaddy(t) })
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	// The cluster opens on first use.
	resp, err := client.Get("http://" + pub + "/v2/_catalog")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("catalog: %s", resp.Status)
	}
	if !clusterGCPaused(t) {
		t.Error("every site read-only: the cluster's GC still runs on this replica")
	}
	for _, step := range []struct {
		roPub, roInternal bool
		wantPaused        bool
	}{
		{true, false, false},
		{false, false, false},
		{true, true, true},
	} {
		load(step.roPub, step.roInternal)
		if got := clusterGCPaused(t); got != step.wantPaused {
			t.Errorf("read_only %v/%v: gc paused %v, want %v", step.roPub, step.roInternal, got, step.wantPaused)
		}
		resp, err := client.Post("http://"+internal+"/v2/team/app/blobs/uploads/", "", nil)
		if err != nil {
			// A connection the replaced config's server accepted as it
			// shut down ends without an answer (README, "Config reloads"); a
			// client sends the POST again, and so does this one, once.
			resp, err = client.Post("http://"+internal+"/v2/team/app/blobs/uploads/", "", nil)
		}
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if want := map[bool]int{true: http.StatusForbidden, false: http.StatusAccepted}[step.roInternal]; resp.StatusCode != want {
			t.Errorf("read_only %v/%v: push on internal: %d, want %d", step.roPub, step.roInternal, resp.StatusCode, want)
		}
	}
}
