package registry

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestLargeManifestStalledReaders: clients that ask for a 24 MiB manifest
// (more than the socket buffers take) and never read the answer hold its
// share of the serving budget (manifestmem.go) only until
// manifestWriteTimeout: more of them than the budget covers do not keep
// another client from pulling it for long.
func TestLargeManifestStalledReaders(t *testing.T) {
	old := manifestWriteTimeout
	manifestWriteTimeout = time.Second
	defer func() { manifestWriteTimeout = old }()
	tr := newTestRegistry(t, func(c *Config) { c.MaxManifestSize = 32 << 20 })
	m := tr.image("big/app", "layer")
	big := bytes.Replace(m, []byte(`{`), []byte(`{"annotations":{"pad":"`+strings.Repeat("p", 24<<20)+`"},`), 1)
	tr.wantStatus(tr.pushManifest("big/app", "v1", MediaTypeOCIManifest, big), http.StatusCreated)

	// Twice as many stalled readers as the budget serves at once.
	stalled := 2 * manifestServeBudget / min(2*len(big), manifestServeBudget)
	for range stalled {
		c, err := net.Dial("tcp", strings.TrimPrefix(tr.srv.URL, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET /v2/big/app/manifests/v1 HTTP/1.1\r\nHost: x\r\nAccept: %s\r\n\r\n", MediaTypeOCIManifest)
	}
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	resp := tr.do(http.MethodGet, "/v2/big/app/manifests/v1", nil, "Accept", MediaTypeOCIManifest)
	tr.wantStatus(resp, http.StatusOK)
	if !bytes.Equal(resp.body, big) {
		t.Fatalf("got %d bytes, not the manifest", len(resp.body))
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("the pull took %v behind %d stalled readers", d, stalled)
	}
	t.Logf("pulled behind %d stalled readers in %v", stalled, time.Since(start).Round(time.Millisecond))
}
