package composite

import (
	"bytes"
	"errors"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache"
)

// TestUploadBytesAcrossReplicas: the bytes open uploads hold count on
// every replica: while a client's sessions on one replica hold its share,
// another replica refuses it a new session; a chunk on the other replica
// that would pass the total is refused with the single-node store's error
// and leaves its session as it was; a commit anywhere frees the bytes.
func TestUploadBytesAcrossReplicas(t *testing.T) {
	each(t, func(t *testing.T, replica replicas) {
		const mib = 1 << 20
		a, b := replica(), replica()
		l := cache.UploadLimits{TotalBytes: 3 * mib, PerOwnerBytes: 2 * mib}
		a.SetUploadLimits(l)
		b.SetUploadLimits(l)
		const repo = "team/app"

		ua, err := a.OpenUpload(ctx(t), repo, "alice")
		if err != nil {
			t.Fatal(err)
		}
		alice := randomBytes(2 * mib)
		if _, err := a.AppendUpload(ctx(t), repo, ua.ID, 0, bytes.NewReader(alice)); err != nil {
			t.Fatalf("a chunk of exactly the share: %v", err)
		}
		if _, err := b.OpenUpload(ctx(t), repo, "alice"); !errors.Is(err, cache.ErrUploadShare) {
			t.Fatalf("a session of a client whose share is held on another replica: %v, want ErrUploadShare", err)
		}

		ub, err := b.OpenUpload(ctx(t), repo, "bob")
		if err != nil {
			t.Fatal(err)
		}
		_, err = b.AppendUpload(ctx(t), repo, ub.ID, 0, bytes.NewReader(randomBytes(mib+mib/2)))
		if !errors.Is(err, cache.ErrUploadSpace) || errors.Is(err, cache.ErrUploadShare) {
			t.Fatalf("a chunk past the total held on another replica: %v, want ErrUploadSpace", err)
		}
		if got, err := b.GetUpload(ctx(t), repo, ub.ID); err != nil || got.Size != 0 {
			t.Fatalf("session after a refused chunk: %+v, %v; want it as it was", got, err)
		}
		// A replica that died mid-chunk left a reservation; the next
		// chunk of the session (it holds the session's lease) drops it.
		if err := a.meta.ReserveUploadBytes(ctx(t), ub.ID, mib, a.quota()); err != nil {
			t.Fatal(err)
		}
		bob := randomBytes(mib)
		if _, err := a.AppendUpload(ctx(t), repo, ub.ID, 0, bytes.NewReader(bob)); err != nil {
			t.Fatalf("a chunk that fits exactly, after a refused one: %v", err)
		}
		// Alice's commit frees her bytes for everyone.
		d := cache.FromBytes(cache.SHA256, alice)
		if _, err := b.CommitUpload(ctx(t), repo, ua.ID, d); err != nil {
			t.Fatal(err)
		}
		more := randomBytes(mib) // bob's share, all of it
		if _, err := b.AppendUpload(ctx(t), repo, ub.ID, mib, bytes.NewReader(more)); err != nil {
			t.Fatalf("a chunk after the commit freed the space: %v", err)
		}
		if _, err := a.CommitUpload(ctx(t), repo, ub.ID, cache.FromBytes(cache.SHA256, append(bob, more...))); err != nil {
			t.Fatal(err)
		}
	})
}
