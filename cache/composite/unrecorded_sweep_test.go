package composite

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore"
)

// TestGCCollectsBytesWithNoRecord: bytes in the blob store that no record
// names (a replica wrote them, their record failed while the database was
// full, and the replica was restarted before it could record them again:
// it forgot them) are found by GC's listing of the blob store and
// collected after the grace period, plain blobs and a session's linked
// one alike; blobs a manifest references are not touched, and neither
// are unrecorded bytes younger than the grace period.
func TestGCCollectsBytesWithNoRecord(t *testing.T) {
	each(t, func(t *testing.T, replica replicas) {
		c := &clock{t: time.Now()}
		a, b := replica(), replica()
		a.now, b.now = c.now, c.now
		b.batch = 1 // pages of one: the listings' cursors carry each pass on

		config := push(t, a, "team/app", []byte(`{"config":1}`))
		layer := push(t, a, "team/app", randomBytes(70000))
		m, body := imageManifest(t, config, layer)
		if err := b.PutManifest(ctx(t), "team/app", m, body, []string{"v1"}); err != nil {
			t.Fatal(err)
		}
		// What a replica killed before it recorded them leaves: no
		// record, and no replica remembers them.
		plainBytes := randomBytes(3000)
		plain := cache.FromBytes(cache.SHA256, plainBytes)
		if _, err := a.blobs.Put(ctx(t), plain, int64(len(plainBytes)), bytes.NewReader(plainBytes)); err != nil {
			t.Fatal(err)
		}
		sess, err := a.blobs.NewSession(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		sessBytes := randomBytes(5<<20 + 10)
		if _, err := sess.Append(ctx(t), 0, bytes.NewReader(sessBytes)); err != nil {
			t.Fatal(err)
		}
		committed := cache.FromBytes(cache.SHA256, sessBytes)
		if _, err := sess.Commit(ctx(t), committed, int64(len(sessBytes))); err != nil {
			t.Fatal(err)
		}

		gone := func(d cache.Digest) bool {
			_, err := a.blobs.Stat(ctx(t), d)
			if err != nil && !errors.Is(err, blobstore.ErrNotFound) {
				t.Fatal(err)
			}
			return err != nil
		}
		// Inside the grace period: nothing goes.
		if _, err := b.GC(ctx(t)); err != nil {
			t.Fatal(err)
		}
		if gone(plain) || gone(committed) {
			t.Fatal("GC inside the grace period removed bytes with no record")
		}
		// Past it, within a few passes (the first records them, a
		// later one, a grace period on, collects them).
		for range 3 {
			c.add(25 * time.Hour)
			if _, err := b.GC(ctx(t)); err != nil {
				t.Fatal(err)
			}
		}
		if !gone(plain) || !gone(committed) {
			t.Errorf("after GC passes past the grace period, bytes with no record are still there: plain %v, a session's %v",
				!gone(plain), !gone(committed))
		}
		for _, d := range []cache.Digest{config, layer} {
			if gone(d) {
				t.Errorf("GC removed %s, which a manifest references", d)
			}
		}
		if _, _, err := a.GetManifest(ctx(t), "team/app", m.Digest); err != nil {
			t.Errorf("manifest after GC: %v", err)
		}
	})
}
