package composite

import (
	"errors"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/coord"
)

// Expiry is bounded per pass and resumes where the last pass stopped:
// sessions a request holds (the lease) do not come back first in every
// batch, and a pass never examines more than its bound, however many
// sessions are open.
func TestGCExpiryBatched(t *testing.T) {
	each(t, func(t *testing.T, replica replicas) {
		c := &clock{t: time.Now()}
		a, b := replica(), replica()
		a.now, b.now = c.now, c.now
		a.batch, a.uploadsPerPass = 2, 3

		var ids []string
		for range 7 {
			u, err := a.OpenUpload(ctx(t), "team/app", "")
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, u.ID)
			c.add(time.Second) // one start each: the order is the opening order
		}
		// Requests on another replica write the two oldest right now.
		var held []coord.Lease
		for _, id := range ids[:2] {
			l, ok, err := b.leases.Acquire(ctx(t), "upload/"+id, time.Minute)
			if err != nil || !ok {
				t.Fatalf("lease of %s: %v, %v", id, ok, err)
			}
			held = append(held, l)
		}
		c.add(25 * time.Hour)

		// 7 sessions, 3 a pass: the held two and one, then three, then
		// the last one (the listing ends: the next pass starts over).
		for i, want := range []int{1, 3, 1} {
			st, err := a.GC(ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			if st.UploadsExpired != want {
				t.Errorf("pass %d expired %d sessions, want %d", i+1, st.UploadsExpired, want)
			}
		}
		for i, id := range ids {
			_, err := b.meta.Upload(ctx(t), id)
			if gone := err != nil; gone != (i >= 2) {
				t.Errorf("session %d after three passes: %v (held: %v)", i, err, i < 2)
			}
		}
		for _, l := range held {
			_ = l.Release(ctx(t))
		}
		st, err := a.GC(ctx(t))
		if err != nil || st.UploadsExpired != 2 {
			t.Errorf("pass after the requests ended: %+v, %v; want the 2 held sessions", st, err)
		}
		if _, err := b.GetUpload(ctx(t), "team/app", ids[0]); !errors.Is(err, cache.ErrUploadUnknown) {
			t.Errorf("held session after its request ended: %v", err)
		}
	})
}
