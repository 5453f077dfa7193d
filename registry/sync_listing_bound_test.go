package registry

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
)

// endlessListing is an upstream whose tag list and catalog go on page
// after page (up to pages), each page pageBytes of names never seen
// before; with repeat, each page is one short name over and over instead.
// served counts the pages it answered.
func endlessListing(pages, pageBytes int, repeat bool, served *atomic.Int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key, prefix := "tags", ""
		switch {
		case r.URL.Path == "/v2/_catalog":
			key, prefix = "repositories", "library/"
		case strings.HasSuffix(r.URL.Path, "/tags/list"):
		default:
			http.NotFound(w, r)
			return
		}
		p, _ := strconv.Atoi(r.URL.Query().Get("p"))
		served.Add(1)
		if p+1 < pages {
			w.Header().Set("Link", fmt.Sprintf(`<%s?n=1000&p=%d>; rel="next"`, r.URL.Path, p+1))
		}
		var b strings.Builder
		b.WriteString(`{"name":"library/app","` + key + `":[`)
		for i := 0; b.Len() < pageBytes; i++ {
			if i > 0 {
				b.WriteByte(',')
			}
			if repeat {
				b.WriteString(`"a"`)
			} else {
				fmt.Fprintf(&b, `"%st%06d-%08d"`, prefix, p, i)
			}
		}
		b.WriteString("]}")
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(b.String()))
	})
}

// TestSyncListingBounded: what scheduled sync reads of one upstream
// listing (a repository's tags, the catalog), across all its pages, is
// bounded by maxSyncListing; past it the listing fails, and nothing more
// is asked. Before, every page (up to maxListPages of 32 MiB each) was
// decoded whole and every name kept: against the built binary an upstream
// of 12 pages of 30 MiB took the server from 68 MB to 855 MB RSS, linearly
// (66 MB a page, so 10,000 pages were hundreds of GB), and this test read
// all 80 pages and returned ~1.6 million names without error.
func TestSyncListingBounded(t *testing.T) {
	const pageBytes = 1 << 20
	const pages = 80 // far more than maxSyncListing's worth
	for _, repeat := range []bool{false, true} {
		for _, kind := range []string{"tags", "catalog"} {
			t.Run(fmt.Sprintf("%s/repeat=%v", kind, repeat), func(t *testing.T) {
				var served atomic.Int64
				env, _ := newHostileEnv(t, endlessListing(pages, pageBytes, repeat, &served))
				src := env.h.SyncSource(env.mirror)
				var n int
				var err error
				if kind == "tags" {
					var tags []string
					tags, err = src.Tags(context.Background(), "library/app")
					n = len(tags)
				} else {
					var repos []string
					repos, err = src.Repositories(context.Background())
					n = len(repos)
				}
				if err == nil {
					t.Errorf("listing of %d pages of %d bytes: no error, %d names kept", served.Load(), pageBytes, n)
				} else if !strings.Contains(err.Error(), "names") {
					t.Errorf("error %q does not say the listing was too long", err)
				}
				// A page is read up to the bound at most: the names of a
				// page cost more than its bytes.
				if got, most := served.Load(), int64(maxSyncListing/pageBytes+1); got > most {
					t.Errorf("upstream asked for %d pages, want at most %d", got, most)
				}
			})
		}
	}
}
