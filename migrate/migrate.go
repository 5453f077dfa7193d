// Package migrate copies a single-node storage folder (blob files and
// badger metadata, package cache) into the backends of any other setup
// the registry runs on (an S3 bucket or a shared folder for blobs,
// PostgreSQL or the embedded database in a metadata_dir for metadata,
// through package composite), verified by digest: `caddy oci migrate`
// (command.go).
//
// It copies what a registry serves and what its users hold: every blob,
// every repository's blob links with their times, manifests with their
// exact bytes, tags
// (referrers come with the manifests, whose subjects the destination
// indexes again), when mirrored tags were last confirmed upstream, API
// keys, live sign-in sessions and the key sessions are sealed with.
// Upload sessions in progress are not copied: their bytes are files the
// bucket cannot take over half-written, and a client restarts an upload
// it lost.
//
// A run skips whatever the destination holds already (a blob by digest,
// a manifest by digest, a tag that points right), so an interrupted run
// is finished by running it again, and a second run copies nothing.
package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/metastore"
)

// Source is what a migration reads: the single-node store.
type Source = *cache.Store

// Dest is the store a migration writes: a composite.Store on the
// destination's backends. Its PutBlob must verify the digest of what it
// stores, as every store's does; composite's hands the bytes to the blob
// store's Put with the digest known up front (blobstore.Putter), never to
// an upload session.
type Dest interface {
	StatBlob(ctx context.Context, d cache.Digest) (cache.BlobInfo, error)
	OpenBlob(ctx context.Context, d cache.Digest) (blobstore.Blob, error)
	PutBlob(ctx context.Context, want cache.Digest, size int64, r io.Reader) (int64, error)
	StatManifest(ctx context.Context, repo string, d cache.Digest) (cache.Manifest, error)
	GetManifest(ctx context.Context, repo string, d cache.Digest) (cache.Manifest, []byte, error)
	PutManifest(ctx context.Context, repo string, m cache.Manifest, body []byte, tags []string) error
	ResolveTag(ctx context.Context, repo, tag string) (cache.Digest, error)
	Tags(ctx context.Context, repo, last string, n int) ([]string, bool, error)
	TagInfo(ctx context.Context, repo, tag string) (cache.TagInfo, error)
	SetTagFetched(ctx context.Context, repo, tag string, t time.Time) error
}

// LinkDest is the destination's metadata (metastore.Store), which takes
// a blob link with the time it was made: GC's grace period for a link no
// manifest references counts from it, as it did in the folder.
type LinkDest interface {
	LinkBlob(ctx context.Context, repo string, d cache.Digest, at time.Time) error
	BlobLink(ctx context.Context, repo string, d cache.Digest) (metastore.Link, metastore.BlobRecord, error)
}

// Target is where a run writes: the store, its metadata and the auth
// layer's records (*pgmeta.Store or *badgermeta.Store, both Meta and
// Auth); Auth nil copies no auth records.
type Target struct {
	Store Dest
	Meta  LinkDest
	Auth  AuthDest
}

// AuthDest holds the auth layer's records at the destination
// (*pgmeta.Store, *badgermeta.Store).
type AuthDest interface {
	CreateAPIKey(id string, record []byte) error
	APIKey(id string) ([]byte, error)
	CreateSession(id string, record []byte, expires time.Time) error
	Session(id string) ([]byte, error)
	ImportAuthSecret(name string, secret []byte) (stored []byte, created bool, err error)
}

// Options of a run.
type Options struct {
	// Verify re-reads every blob from the destination and checks its
	// digest, and compares every repository's manifests and tags with the
	// source's, after the copy.
	Verify bool
	// Progress, if set, gets one line at a time of what the run does.
	Progress func(line string)
	// ProgressEvery is how often blob copying reports; default 2s.
	ProgressEvery time.Duration
	// Jobs is how many blobs are copied at once; default 4.
	Jobs int
}

// Summary counts what a run did. "Copied" counts what the destination
// lacked; "Present" what it held already and was skipped.
type Summary struct {
	Blobs, BlobsPresent         int
	Bytes                       int64 // blob bytes copied
	Links, LinksPresent         int
	Manifests, ManifestsPresent int
	Tags, TagsPresent           int
	TagFetches                  int
	APIKeys, APIKeysPresent     int
	Sessions, SessionsPresent   int
	Secrets, SecretsPresent     int
	VerifiedBlobs               int
	VerifiedBytes               int64
	// UploadsLeft counts the folder's upload sessions in progress, which
	// are not copied: their clients push again.
	UploadsLeft int
	Copying     time.Duration // without Verify's re-reading
	Elapsed     time.Duration
	// Failures name each thing not copied (or found different by Verify)
	// and why. A run with failures returns an error.
	Failures []string
}

// Copied is how many things the run wrote to the destination.
func (s Summary) Copied() int {
	return s.Blobs + s.Links + s.Manifests + s.Tags + s.TagFetches + s.APIKeys + s.Sessions + s.Secrets
}

// String is the closing report.
func (s Summary) String() string {
	secs := s.Copying.Seconds()
	rate := 0.0
	if secs > 0 {
		rate = float64(s.Bytes) / 1e6 / secs
	}
	out := fmt.Sprintf("copied: %d blobs (%d bytes), %d blob links, %d manifests, %d tags, %d tag fetch times, %d API keys, %d sessions, %d secrets\n",
		s.Blobs, s.Bytes, s.Links, s.Manifests, s.Tags, s.TagFetches, s.APIKeys, s.Sessions, s.Secrets)
	out += fmt.Sprintf("already there: %d blobs, %d blob links, %d manifests, %d tags, %d API keys, %d sessions, %d secrets\n",
		s.BlobsPresent, s.LinksPresent, s.ManifestsPresent, s.TagsPresent, s.APIKeysPresent, s.SessionsPresent, s.SecretsPresent)
	if s.UploadsLeft > 0 {
		out += fmt.Sprintf("not copied: %d upload sessions in progress (their clients push again)\n", s.UploadsLeft)
	}
	if s.VerifiedBlobs > 0 {
		out += fmt.Sprintf("verified: %d blobs (%d bytes) re-read from the destination\n", s.VerifiedBlobs, s.VerifiedBytes)
	}
	out += fmt.Sprintf("time: %s (copying %s, %.1f MB/s)", s.Elapsed.Round(time.Millisecond), s.Copying.Round(time.Millisecond), rate)
	if n := len(s.Failures); n > 0 {
		out += fmt.Sprintf("\nFAILED: %d problems", n)
		for _, f := range s.Failures {
			out += "\n  " + f
		}
	}
	return out
}

// Run copies src into dst (and auth, if not nil) and reports what it did.
// A failure of one thing (a blob whose bytes do not match its digest) is
// named in the summary and the run goes on with the rest, leaving out
// what depends on it (the blob's links, manifests that reference it); the
// error then says how many failed. An unreachable destination ends the
// run at once.
func Run(ctx context.Context, src Source, to Target, opts Options) (Summary, error) {
	r := &run{src: src, dst: to.Store, meta: to.Meta, auth: to.Auth, opts: opts, failed: map[cache.Digest]bool{}}
	if r.opts.Progress == nil {
		r.opts.Progress = func(string) {}
	}
	if r.opts.Jobs <= 0 {
		r.opts.Jobs = 4
	}
	if r.opts.ProgressEvery <= 0 {
		r.opts.ProgressEvery = 2 * time.Second
	}
	r.start = time.Now()
	err := r.all(ctx)
	r.sum.Elapsed = time.Since(r.start)
	if r.sum.Copying == 0 {
		r.sum.Copying = r.sum.Elapsed
	}
	if err != nil {
		return r.sum, err
	}
	if n := len(r.sum.Failures); n > 0 {
		return r.sum, fmt.Errorf("migrate: %d problems (the first: %s)", n, r.sum.Failures[0])
	}
	return r.sum, nil
}

type run struct {
	src    Source
	dst    Dest
	meta   LinkDest
	auth   AuthDest
	opts   Options
	sum    Summary
	failed map[cache.Digest]bool // blobs not copied
	start  time.Time
}

func (r *run) all(ctx context.Context) error {
	uploads, err := r.src.UploadSessions()
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	r.sum.UploadsLeft = uploads
	blobs, err := r.listBlobs(ctx)
	if err != nil {
		return err
	}
	if err := r.copyBlobs(ctx, blobs); err != nil {
		return err
	}
	repos, _, err := r.src.Repositories(ctx, "", -1)
	if err != nil {
		return fmt.Errorf("source: list repositories: %w", err)
	}
	r.opts.Progress(fmt.Sprintf("repositories: %d", len(repos)))
	for _, repo := range repos {
		if err := r.copyRepo(ctx, repo); err != nil {
			return err
		}
	}
	if r.auth != nil {
		if err := r.copyAuth(ctx); err != nil {
			return err
		}
	}
	r.sum.Copying = time.Since(r.start)
	if r.opts.Verify {
		return r.verify(ctx, blobs, repos)
	}
	return nil
}

// fail notes a failure; it ends the run (returned non-nil) when the
// destination or the run itself is gone, since then every other item
// would fail the same way.
func (r *run) fail(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(err, cache.ErrUnavailable) {
		return fmt.Errorf("%s: destination unavailable: %w", what, err)
	}
	r.sum.Failures = append(r.sum.Failures, fmt.Sprintf("%s: %v", what, err))
	r.opts.Progress("FAILED " + r.sum.Failures[len(r.sum.Failures)-1])
	return nil
}

func (r *run) listBlobs(ctx context.Context) ([]cache.BlobInfo, error) {
	var blobs []cache.BlobInfo
	var total int64
	err := r.src.EachBlob(ctx, func(b cache.BlobInfo) error {
		blobs = append(blobs, b)
		total += b.Size
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	r.opts.Progress(fmt.Sprintf("blobs: %d in the folder, %d bytes", len(blobs), total))
	return blobs, nil
}

// copyBlobs copies blobs Jobs at a time (an object store's latency, not
// its bandwidth, bounds one stream). Workers only copy; this goroutine
// alone keeps the counts and failures.
func (r *run) copyBlobs(ctx context.Context, blobs []cache.BlobInfo) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	todo := make(chan cache.BlobInfo)
	done := make(chan blobResult)
	var wg sync.WaitGroup
	for range min(r.opts.Jobs, max(len(blobs), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range todo {
				done <- r.copyBlob(ctx, b)
			}
		}()
	}
	go func() {
		defer close(todo)
		for _, b := range blobs {
			select {
			case todo <- b:
			case <-ctx.Done():
				return
			}
		}
	}()
	go func() {
		wg.Wait()
		close(done)
	}()
	last := time.Now()
	var stop error
	n := 0
	for res := range done {
		n++
		if stop != nil {
			continue // drain while the workers stop
		}
		switch {
		case res.err != nil:
			r.failed[res.digest] = true
			if err := r.fail(ctx, res.what, res.err); err != nil {
				stop = err
				cancel()
			}
		case res.present:
			r.sum.BlobsPresent++
		default:
			r.sum.Blobs++
			r.sum.Bytes += res.bytes
		}
		if time.Since(last) >= r.opts.ProgressEvery {
			last = time.Now()
			r.opts.Progress(fmt.Sprintf("blobs: %d/%d done, %d bytes copied", n, len(blobs), r.sum.Bytes))
		}
	}
	if stop == nil {
		stop = ctx.Err()
	}
	return stop
}

// blobResult is what a worker did with one blob.
type blobResult struct {
	digest  cache.Digest
	present bool  // the destination had it
	bytes   int64 // copied
	what    string
	err     error
}

func (r *run) copyBlob(ctx context.Context, b cache.BlobInfo) blobResult {
	res := blobResult{digest: b.Digest, what: "blob " + b.Digest.String()}
	if got, err := r.dst.StatBlob(ctx, b.Digest); err == nil && got.Size == b.Size {
		res.present = true
		return res
	} else if err != nil && !errors.Is(err, cache.ErrBlobUnknown) {
		res.err = err
		return res
	}
	f, err := r.src.OpenBlob(ctx, b.Digest)
	if err != nil {
		res.what, res.err = res.what+": source", err
		return res
	}
	defer f.Close()
	// The destination hashes what it stores and records nothing when the
	// bytes are not the digest's: a file damaged on disk stops here.
	res.bytes, res.err = r.dst.PutBlob(ctx, b.Digest, f.Size(), f)
	return res
}

func (r *run) copyRepo(ctx context.Context, repo string) error {
	before := r.sum
	if err := r.copyLinks(ctx, repo); err != nil {
		return err
	}
	tags, err := r.srcTags(ctx, repo)
	if err != nil {
		return r.fail(ctx, "repository "+repo, err)
	}
	byDigest := map[cache.Digest][]string{}
	for tag, ti := range tags {
		byDigest[ti.Digest] = append(byDigest[ti.Digest], tag)
	}
	ms, err := r.src.ManifestDigests(ctx, repo)
	if err != nil {
		return r.fail(ctx, "repository "+repo+": manifests", err)
	}
	copied := map[cache.Digest]bool{}
	for _, d := range ms {
		ok, err := r.copyManifest(ctx, repo, d, byDigest[d])
		if err != nil {
			return err
		}
		copied[d] = ok
	}
	for tag, ti := range tags {
		if !copied[ti.Digest] {
			if !slices.Contains(ms, ti.Digest) {
				if err := r.fail(ctx, fmt.Sprintf("tag %s:%s", repo, tag), fmt.Errorf("points at %s, which the repository does not hold", ti.Digest)); err != nil {
					return err
				}
			}
			continue // its manifest's failure is named already
		}
		if err := r.copyTagFetched(ctx, repo, tag, ti); err != nil {
			return err
		}
	}
	r.opts.Progress(fmt.Sprintf("repository %s: %d blob links, %d manifests, %d tags copied", repo,
		r.sum.Links-before.Links, r.sum.Manifests-before.Manifests, r.sum.Tags-before.Tags))
	return nil
}

func (r *run) copyLinks(ctx context.Context, repo string) error {
	links, err := r.src.BlobLinks(ctx, repo)
	if err != nil {
		return r.fail(ctx, "repository "+repo+": blob links", err)
	}
	times, err := r.src.BlobLinkTimes(ctx, repo)
	if err != nil {
		return r.fail(ctx, "repository "+repo+": blob link times", err)
	}
	now := time.Now()
	for _, d := range links {
		what := fmt.Sprintf("blob link %s@%s", repo, d)
		if r.failed[d] {
			if err := r.fail(ctx, what, errors.New("not copied: its blob failed")); err != nil {
				return err
			}
			continue
		}
		// Read, not HasBlob: that renews an old link, and this one's
		// time is the folder's.
		if _, _, err := r.meta.BlobLink(ctx, repo, d); err == nil {
			r.sum.LinksPresent++
			continue
		} else if !errors.Is(err, metastore.ErrBlobUnknown) {
			if err := r.fail(ctx, what, err); err != nil {
				return err
			}
			continue
		}
		at, ok := times[d]
		if !ok || at.After(now) {
			at = now // a link from before links had a time, or a clock gone wrong
		}
		if err := r.meta.LinkBlob(ctx, repo, d, at); err != nil {
			if err := r.fail(ctx, what, err); err != nil {
				return err
			}
			continue
		}
		r.sum.Links++
	}
	return nil
}

// srcTags reads every tag of repo with what it points at.
func (r *run) srcTags(ctx context.Context, repo string) (map[string]cache.TagInfo, error) {
	names, _, err := r.src.Tags(ctx, repo, "", -1)
	if err != nil {
		return nil, err
	}
	out := make(map[string]cache.TagInfo, len(names))
	for _, t := range names {
		ti, err := r.src.TagInfo(ctx, repo, t)
		if err != nil {
			return nil, fmt.Errorf("tag %s: %w", t, err)
		}
		out[t] = ti
	}
	return out, nil
}

// copyManifest copies manifest d of repo with the tags that point at it,
// unless the destination has both; it reports whether the destination
// now holds it.
func (r *run) copyManifest(ctx context.Context, repo string, d cache.Digest, tags []string) (bool, error) {
	what := fmt.Sprintf("manifest %s@%s", repo, d)
	m, body, err := r.src.GetManifest(ctx, repo, d)
	if err != nil {
		return false, r.fail(ctx, what+": source", err)
	}
	if got := cache.FromBytes(d.Algorithm, body); got != d {
		return false, r.fail(ctx, what, fmt.Errorf("%w: its bytes in the folder hash to %s", cache.ErrDigestMismatch, got))
	}
	for _, ref := range cache.ManifestRefs(body) {
		if r.failed[ref] {
			return false, r.fail(ctx, what, fmt.Errorf("not copied: it references %s, which failed", ref))
		}
	}
	var move []string
	for _, t := range tags {
		if cur, err := r.dst.ResolveTag(ctx, repo, t); err != nil || cur != d {
			move = append(move, t)
		}
	}
	slices.Sort(move)
	_, err = r.dst.StatManifest(ctx, repo, d)
	present := err == nil
	if present && len(move) == 0 {
		r.sum.ManifestsPresent++
		r.sum.TagsPresent += len(tags)
		return true, nil
	}
	if err := r.dst.PutManifest(ctx, repo, m, body, move); err != nil {
		return false, r.fail(ctx, what, err)
	}
	if present {
		r.sum.ManifestsPresent++
	} else {
		r.sum.Manifests++
	}
	r.sum.Tags += len(move)
	r.sum.TagsPresent += len(tags) - len(move)
	return true, nil
}

// copyTagFetched copies when a mirrored tag was last confirmed upstream,
// so the mirror does not ask upstream again for every tag at once.
func (r *run) copyTagFetched(ctx context.Context, repo, tag string, ti cache.TagInfo) error {
	if ti.Fetched.IsZero() {
		return nil
	}
	got, err := r.dst.TagInfo(ctx, repo, tag)
	// PostgreSQL keeps microseconds, badger nanoseconds.
	if diff := got.Fetched.Sub(ti.Fetched); err == nil && diff > -time.Microsecond && diff < time.Microsecond {
		return nil
	}
	if err := r.dst.SetTagFetched(ctx, repo, tag, ti.Fetched); err != nil {
		return r.fail(ctx, fmt.Sprintf("tag fetch time %s:%s", repo, tag), err)
	}
	r.sum.TagFetches++
	return nil
}
