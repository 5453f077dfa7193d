package substore

import (
	"context"

	"github.com/caddy-oci/caddy-oci/registry"
)

// catalogBatch is how many names a cursor asks its store for at once.
const catalogBatch = 100

// Repositories merges the stores' catalogs in lexical order, with the
// same paging as one store's: up to n names after last (n < 0: all) and
// whether more remain. A name is listed by the store it lives in only,
// so a repository the main store still holds under a sub-path's prefix
// (written before the sub-path existed) is not listed: it cannot be
// pulled either.
func (r *Router) Repositories(ctx context.Context, last string, n int) ([]string, bool, error) {
	cursors := make([]*cursor, len(r.all))
	for i, s := range r.all {
		cursors[i] = &cursor{r: r, s: s, after: last, more: true, batch: catalogBatch}
		if n < 0 {
			cursors[i].batch = -1
		} else if n+1 > catalogBatch {
			cursors[i].batch = n + 1
		}
	}
	var out []string
	for n < 0 || len(out) < n {
		next, err := smallest(ctx, cursors)
		if err != nil {
			return nil, false, err
		}
		if next == nil {
			return out, false, nil
		}
		out = append(out, next.pop())
	}
	next, err := smallest(ctx, cursors)
	if err != nil {
		return nil, false, err
	}
	return out, next != nil, nil
}

// smallest is the cursor whose next name comes first, or nil when all
// are done.
func smallest(ctx context.Context, cursors []*cursor) (*cursor, error) {
	var best *cursor
	for _, c := range cursors {
		name, ok, err := c.peek(ctx)
		if err != nil {
			return nil, err
		}
		if ok && (best == nil || name < best.buf[0]) {
			best = c
		}
	}
	return best, nil
}

// cursor reads one store's catalog in batches, keeping the names that
// live in that store.
type cursor struct {
	r     *Router
	s     registry.Store
	after string   // the last name fetched
	buf   []string // fetched, not yet taken
	more  bool     // the store may have names after `after`
	batch int
}

// peek returns the next name, fetching as needed.
func (c *cursor) peek(ctx context.Context) (string, bool, error) {
	for len(c.buf) == 0 && c.more {
		page, more, err := c.s.Repositories(ctx, c.after, c.batch)
		if err != nil {
			return "", false, err
		}
		c.more = more && len(page) > 0
		if len(page) > 0 {
			c.after = page[len(page)-1]
		}
		c.buf = c.r.owned(c.s, page)
	}
	if len(c.buf) == 0 {
		return "", false, nil
	}
	return c.buf[0], true, nil
}

func (c *cursor) pop() string {
	name := c.buf[0]
	c.buf = c.buf[1:]
	return name
}
