package front

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/caddy-oci/caddy-oci/authscope"
)

// TestRewriteBudget: the bodies the front holds whole to rewrite (tag
// lists, errors) take turns by size within a budget shared by its
// requests. Before, every request held its own (up to MaxRewrite, and
// several times that once decoded), so many clients asking at once for
// a large tag list grew the front's memory without bound.
func TestRewriteBudget(t *testing.T) {
	const tags = 40000 // about 600 KB of tag list
	var list strings.Builder
	list.WriteString(`{"name":"docker.io/library/big","tags":[`)
	for i := range tags {
		if i > 0 {
			list.WriteByte(',')
		}
		fmt.Fprintf(&list, `"t%06d"`, i)
	}
	list.WriteString(`]}`)
	body := list.String()

	const clients = 5
	writing, wrote := make(chan struct{}, clients), make(chan struct{}, clients)
	gate := make(chan struct{})
	backend := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/docker.io/library/big/tags/list" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json") // no Content-Length: as a streamed list
		writing <- struct{}{}
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte(body))
		wrote <- struct{}{}
		<-gate
	})
	f, err := New(Config{
		Namespaces: []authscope.Namespace{{Prefix: "docker.io", Default: true}},
		MaxRewrite: 1 << 20, RewriteBudget: 2 << 20, Logger: zaptest.NewLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f.Middleware(backend))
	t.Cleanup(srv.Close)

	type answer struct {
		status int
		name   string
		tags   int
	}
	answers := make(chan answer, clients)
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(srv.URL + "/v2/library/big/tags/list")
			if err != nil {
				answers <- answer{}
				return
			}
			defer resp.Body.Close()
			var tl struct {
				Name string   `json:"name"`
				Tags []string `json:"tags"`
			}
			_ = json.NewDecoder(resp.Body).Decode(&tl)
			answers <- answer{resp.StatusCode, tl.Name, len(tl.Tags)}
		}()
	}
	for range clients {
		<-writing
	}
	for range 2 { // the budget holds two bodies of MaxRewrite
		<-wrote
	}
	select {
	case <-wrote:
		t.Errorf("a third body of up to 1 MiB was collected while two held the 2 MiB budget")
	case <-time.After(300 * time.Millisecond):
	}
	close(gate)
	wg.Wait()
	close(answers)
	for a := range answers {
		if a.status != http.StatusOK || a.name != "library/big" || a.tags != tags {
			t.Errorf("answer %+v, want 200 with library/big's %d tags", a, tags)
		}
	}
}
