package registry

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache"
)

// maxCatalogPage bounds a catalog page: a client that asks for more (or
// for everything) gets this many and a Link to the rest.
const maxCatalogPage = 1000

// catalogScanPage is how many names one store read of a filtered catalog
// takes (see listRepositories).
const catalogScanPage = 1000

type tagList struct {
	Name string   `json:"name"`
	Tags []string `json:"tags"`
}

type catalogList struct {
	Repositories []string `json:"repositories"`
}

// pageParams reads n and last. n < 0 means no limit was given.
func pageParams(r *http.Request) (n int, last string, err error) {
	q := r.URL.Query()
	n = -1
	if q.Has("n") {
		v, perr := strconv.Atoi(q.Get("n"))
		if perr != nil || v < 0 {
			return 0, "", newError(http.StatusBadRequest, CodePaginationInvalid,
				"n must be a non-negative integer", perr)
		}
		n = v
	}
	return n, q.Get("last"), nil
}

// tagStreamPage is how many tags one read of the store lists: a client
// asking for the whole list (no n) gets a longer one streamed a page at a
// time, and one asking for more than a page gets a page and a Link, so a
// reader holds one page, not the list (100,000 tags held whole cost about
// 5 MiB per reader).
const tagStreamPage = 1000

// tagsList serves GET /v2/<name>/tags/list with n/last paging. Without n
// the whole list is the answer, as the spec and clients expect; one that
// fits a page keeps its Content-Length, a longer one is streamed.
func (h *Handler) tagsList(w http.ResponseWriter, r *http.Request, rc *request) error {
	n, last, err := pageParams(r)
	if err != nil {
		return err
	}
	if n > tagStreamPage {
		// As for the catalog: more than a page gets a page and a Link to
		// the rest (the spec lets a registry return fewer than n), so a
		// large n holds no more than the whole list does.
		n = tagStreamPage
	}
	read := n
	if n < 0 {
		read = tagStreamPage
	}
	tags, more, err := h.cfg.Store.Tags(r.Context(), rc.name, last, read)
	if err != nil {
		if errors.Is(err, cache.ErrRepoUnknown) {
			return newError(http.StatusNotFound, CodeNameUnknown, "repository name not known to registry", err)
		}
		return errInternal(err)
	}
	if tags == nil {
		tags = []string{}
	}
	if n < 0 && more && len(tags) > 0 {
		return h.streamTags(w, r, rc, tags)
	}
	if more && len(tags) > 0 {
		setNextLink(w, rc.url("/tags/list"), n, tags[len(tags)-1])
	}
	return writeJSON(w, r, "application/json", tagList{Name: rc.typed, Tags: tags})
}

// streamTags writes the whole tag list of rc's repository, starting with
// page, the store's first; each further page is read after the previous
// one is sent. The list is each page as the store had it when read: a tag
// made or deleted meanwhile may or may not be in it, as with n/last. A
// store failure after the first bytes breaks the transfer rather than end
// a short list that would look whole.
func (h *Handler) streamTags(w http.ResponseWriter, r *http.Request, rc *request, page []string) error {
	name, err := json.Marshal(rc.typed)
	if err != nil {
		return errInternal(err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return nil
	}
	out := append([]byte(`{"name":`), name...)
	out = append(out, `,"tags":[`...)
	sep, more := "", true
	for {
		for _, tag := range page {
			q, _ := json.Marshal(tag) // a string always encodes
			out = append(append(out, sep...), q...)
			sep = ","
		}
		if !more || len(page) == 0 {
			break
		}
		if _, err := w.Write(out); err != nil {
			return nil // the client left
		}
		out = out[:0]
		page, more, err = h.cfg.Store.Tags(r.Context(), rc.name, page[len(page)-1], tagStreamPage)
		if errors.Is(err, cache.ErrRepoUnknown) {
			page, more = nil, false // deleted meanwhile: the list is what was there
		} else if err != nil {
			if r.Context().Err() != nil {
				return nil // the client left
			}
			h.cfg.Logger.Warn("tag list cut short", zap.String("repo", rc.name), zap.Error(err))
			breakTransfer(w) // headers and a part are out
		}
	}
	_, _ = w.Write(append(out, "]}"...))
	return nil
}

// catalog serves GET /v2/_catalog with n/last paging.
func (h *Handler) catalog(w http.ResponseWriter, r *http.Request, _ *request) error {
	n, last, err := pageParams(r)
	if err != nil {
		return err
	}
	if n < 0 || n > maxCatalogPage {
		n = maxCatalogPage
	}
	repos, more, err := h.listRepositories(r, last, n)
	if err != nil {
		return errInternal(err)
	}
	if repos == nil {
		repos = []string{}
	}
	if more && len(repos) > 0 {
		setNextLink(w, "/v2/_catalog", n, repos[len(repos)-1])
	}
	return writeJSON(w, r, "application/json", catalogList{Repositories: repos})
}

// listRepositories is a page of the repositories r's caller may see: with
// an Authorizer, pages of the store are filtered until n+1 are found or
// the store has no more. The one past n only says that a next page holds
// something for this caller: whether the store holds more would tell of
// repositories the caller may not see.
func (h *Handler) listRepositories(r *http.Request, last string, n int) ([]string, bool, error) {
	if h.cfg.Authorizer == nil {
		return h.cfg.Store.Repositories(r.Context(), last, n)
	}
	if l, ok := h.cfg.Authorizer.(PrefixLister); ok {
		if prefixes, all := l.ListPrefixes(r); !all && len(prefixes) <= catalogMaxRanges {
			return h.listUnder(r, prefixes, last, n)
		}
	}
	var out []string
	for {
		if err := r.Context().Err(); err != nil {
			return nil, false, err // the client left: stop reading
		}
		// Read in large pages whatever n is: a caller who may see few
		// repositories and asks for pages of one would otherwise cost a
		// store read (a query on PostgreSQL) for every two names.
		page, more, err := h.cfg.Store.Repositories(r.Context(), last, max(n+1, catalogScanPage))
		if err != nil {
			return nil, false, err
		}
		for _, repo := range page {
			if h.cfg.Authorizer.CanList(r, repo) {
				out = append(out, repo)
			}
			if len(out) > n {
				return out[:n], true, nil
			}
		}
		if !more || len(page) == 0 {
			return out, false, nil
		}
		last = page[len(page)-1]
	}
}

// catalogMaxRanges is the most prefixes the catalog reads range by range
// (listUnder); a caller granted read under more (a policy of hundreds of
// project patterns) costs at least a store read for each, more than a
// scan of a registry of fewer names, and is served by the scan. The
// prefixes come from the policy, not from the caller.
const catalogMaxRanges = 64

// catalogRangeFirstRead is how many names the first store read of one
// prefix's range takes; later reads of the same range double it, up to
// catalogScanPage, so that a caller with many narrow grants does not
// cost a large read per grant.
const catalogRangeFirstRead = 100

// listUnder is listRepositories for a caller who may be shown only names
// starting with one of prefixes: only those ranges of the store are
// read, in order, each name still asked of CanList.
func (h *Handler) listUnder(r *http.Request, prefixes []string, last string, n int) ([]string, bool, error) {
	slices.Sort(prefixes)
	var ranges []string // without those inside another
	for _, p := range prefixes {
		if len(ranges) == 0 || !strings.HasPrefix(p, ranges[len(ranges)-1]) {
			ranges = append(ranges, p)
		}
	}
	var out []string
	for _, p := range ranges {
		after := last
		switch {
		case strings.HasPrefix(last, p):
			// last lies in the range: go on after it.
		case last > p:
			continue // the whole range lies before last
		default:
			after = JustBefore(p)
		}
		size := max(n+1, catalogRangeFirstRead)
		for inRange := true; inRange; {
			if err := r.Context().Err(); err != nil {
				return nil, false, err
			}
			page, more, err := h.cfg.Store.Repositories(r.Context(), after, size)
			if err != nil {
				return nil, false, err
			}
			for _, repo := range page {
				if repo < p {
					continue
				}
				if !strings.HasPrefix(repo, p) {
					inRange = false
					break
				}
				if h.cfg.Authorizer.CanList(r, repo) {
					out = append(out, repo)
				}
				if len(out) > n {
					return out[:n], true, nil
				}
			}
			if !more || len(page) == 0 {
				break
			}
			after = page[len(page)-1]
			size = min(size*2, max(n+1, catalogScanPage))
		}
	}
	return out, false, nil
}

// JustBefore is a string that sorts before every name starting with p
// and after every other name that sorts before p (a name's characters
// all sort before '~'), so a store read after it starts at p's range.
func JustBefore(p string) string {
	c := p[len(p)-1]
	if c <= '!' {
		return p[:len(p)-1]
	}
	return p[:len(p)-1] + string(c-1) + "~"
}

// setNextLink sets the RFC 5988 Link to the next page, in the form the
// spec shows: </v2/<name>/tags/list?n=<n>&last=<last>>; rel="next".
// path may carry a query of its own (`ns`).
func setNextLink(w http.ResponseWriter, path string, n int, last string) {
	q := "last=" + url.QueryEscape(last)
	if n >= 0 {
		q = "n=" + strconv.Itoa(n) + "&" + q
	}
	join := "?"
	if strings.Contains(path, "?") {
		join = "&"
	}
	w.Header().Set("Link", "<"+path+join+q+`>; rel="next"`)
}

func writeJSON(w http.ResponseWriter, r *http.Request, contentType string, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return errInternal(err)
	}
	hd := w.Header()
	hd.Set("Content-Type", contentType)
	hd.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
	return nil
}
