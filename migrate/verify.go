package migrate

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/caddy-oci/caddy-oci/cache"
)

// verify re-reads every blob the run meant to copy from the destination
// and hashes it, and compares each repository's manifests (bytes) and
// tags (what they point at) with the source's. Differences are failures.
func (r *run) verify(ctx context.Context, blobs []cache.BlobInfo, repos []string) error {
	r.opts.Progress(fmt.Sprintf("verify: re-reading %d blobs from the destination", len(blobs)))
	last := time.Now()
	for i, b := range blobs {
		if r.failed[b.Digest] {
			continue // named already
		}
		if err := r.verifyBlob(ctx, b); err != nil {
			if err := r.fail(ctx, "verify blob "+b.Digest.String(), err); err != nil {
				return err
			}
		}
		if time.Since(last) >= r.opts.ProgressEvery {
			last = time.Now()
			r.opts.Progress(fmt.Sprintf("verify: %d/%d blobs", i+1, len(blobs)))
		}
	}
	for _, repo := range repos {
		if err := r.verifyRepo(ctx, repo); err != nil {
			return err
		}
	}
	return nil
}

func (r *run) verifyBlob(ctx context.Context, b cache.BlobInfo) error {
	f, err := r.dst.OpenBlob(ctx, b.Digest)
	if err != nil {
		return err
	}
	defer f.Close()
	h := b.Digest.Algorithm.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return err
	}
	if got := cache.FromHash(b.Digest.Algorithm, h); got != b.Digest {
		return fmt.Errorf("%w: the destination's bytes hash to %s", cache.ErrDigestMismatch, got)
	}
	if n != b.Size {
		return fmt.Errorf("%w: %d bytes at the destination, %d in the folder", cache.ErrSizeMismatch, n, b.Size)
	}
	r.sum.VerifiedBlobs++
	r.sum.VerifiedBytes += n
	return nil
}

func (r *run) verifyRepo(ctx context.Context, repo string) error {
	ms, err := r.src.ManifestDigests(ctx, repo)
	if err != nil {
		return r.fail(ctx, "verify repository "+repo, err)
	}
	for _, d := range ms {
		what := fmt.Sprintf("verify manifest %s@%s", repo, d)
		_, want, err := r.src.GetManifest(ctx, repo, d)
		if err != nil {
			if err := r.fail(ctx, what+": source", err); err != nil {
				return err
			}
			continue
		}
		_, got, err := r.dst.GetManifest(ctx, repo, d)
		if err == nil && !bytes.Equal(got, want) {
			err = fmt.Errorf("the destination's bytes differ (%d bytes, the folder's %d)", len(got), len(want))
		}
		if err != nil {
			if err := r.fail(ctx, what, err); err != nil {
				return err
			}
		}
	}
	want, err := r.srcTags(ctx, repo)
	if err != nil {
		return r.fail(ctx, "verify repository "+repo, err)
	}
	var names []string
	if len(want) > 0 {
		names, _, err = r.dst.Tags(ctx, repo, "", -1)
		if err != nil {
			return r.fail(ctx, "verify tags of "+repo, err)
		}
	}
	for _, t := range names {
		if _, ok := want[t]; !ok {
			if err := r.fail(ctx, fmt.Sprintf("verify tag %s:%s", repo, t), fmt.Errorf("at the destination only")); err != nil {
				return err
			}
		}
	}
	for t, ti := range want {
		what := fmt.Sprintf("verify tag %s:%s", repo, t)
		if !slices.Contains(names, t) {
			if err := r.fail(ctx, what, fmt.Errorf("missing at the destination")); err != nil {
				return err
			}
			continue
		}
		got, err := r.dst.ResolveTag(ctx, repo, t)
		if err == nil && got != ti.Digest {
			err = fmt.Errorf("points at %s, the folder's at %s", got, ti.Digest)
		}
		if err != nil {
			if err := r.fail(ctx, what, err); err != nil {
				return err
			}
		}
	}
	return nil
}
