// Package mirrorsync prefetches upstream content on a schedule: for a
// mirror (into its namespace) or a sync_into (into a local prefix), it
// lists the repositories and tags its filters select, and brings each
// tag's manifest, the child manifests of the platforms asked for and
// their blobs into the store. It decides what to fetch and when; how
// content is fetched and stored is the registry's (registry.SyncSource),
// the same paths a pull takes.
package mirrorsync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/registry"
	"github.com/caddy-oci/caddy-oci/registry/upstream"
)

// Defaults of a Config.
const (
	DefaultEvery       = 6 * time.Hour
	DefaultFirstDelay  = 30 * time.Second
	DefaultConcurrency = 4
	// maxErrors kept in a run's status; the count goes on.
	maxErrors = 20
	// attempts of one item within a run when upstream fails for now.
	attempts = 3
	// maxDepth of nested indexes followed.
	maxDepth = 4
	// maxTagManifests bounds the manifests below one tag that a run
	// walks (children of its index and of nested ones, each digest
	// once): upstream writes the indexes, and N entries on each of
	// maxDepth levels would otherwise be N^4 walks. A real multi-platform
	// image has tens.
	maxTagManifests = 1024
)

// Source is what a sync fetches through (registry.SyncSource).
type Source interface {
	Prefix() string
	HoldUntil() time.Time
	Repositories(ctx context.Context) ([]string, error)
	Tags(ctx context.Context, repo string) ([]string, error)
	Tag(ctx context.Context, repo, tag string) (registry.SyncManifest, bool, error)
	// Manifest fetches d, which index parent (as Tag or Manifest returned
	// it) lists: a signature policy's pass of parent carries to d in it.
	Manifest(ctx context.Context, repo string, parent registry.SyncManifest, d cache.Digest) (registry.SyncManifest, bool, error)
	Blob(ctx context.Context, repo string, d cache.Digest) (bool, error)
}

// Observer gets one call per finished run, for metrics. name is a
// configured prefix, never upstream's words.
type Observer interface {
	SyncRun(name string, d time.Duration, st RunStats)
}

// Config is one scheduled sync.
type Config struct {
	// Every is the period between runs, jittered by up to a tenth.
	// Default DefaultEvery.
	Every time.Duration
	// FirstDelay is the wait from Start to the first run, jittered by up
	// to half. Default DefaultFirstDelay.
	FirstDelay time.Duration
	// Content selects what is fetched; at least one.
	Content []Content
	// Concurrency caps the fetches from upstream running at once.
	// Default DefaultConcurrency.
	Concurrency int
	Logger      *zap.Logger
	Observer    Observer
}

// RunStats is what one run did.
type RunStats struct {
	Repositories     int `json:"repositories"`
	Tags             int `json:"tags"`
	ManifestsFetched int `json:"manifests_fetched"`
	BlobsFetched     int `json:"blobs_fetched"`
	// SkippedUnsigned counts tags and platform manifests a signature
	// policy (require_signature) refused: not stored, nothing fetched
	// for them.
	SkippedUnsigned int      `json:"skipped_unsigned"`
	ErrorCount      int      `json:"error_count"`
	Errors          []string `json:"errors,omitempty"`
}

// Status is a sync's state, for /_oci/sync.
type Status struct {
	Name      string     `json:"name"`
	Running   bool       `json:"running"`
	LastStart *time.Time `json:"last_start,omitempty"`
	LastEnd   *time.Time `json:"last_end,omitempty"`
	NextRun   *time.Time `json:"next_run,omitempty"`
	LastRun   *RunStats  `json:"last_run,omitempty"`
}

// Sync is one scheduled sync of one source.
type Sync struct {
	cfg     Config
	src     Source
	filters []filter
	log     *zap.Logger
	trigger chan struct{}
	runMu   sync.Mutex // one run at a time

	mu     sync.Mutex
	status Status
}

// New checks cfg. Nothing is contacted.
func New(cfg Config, src Source) (*Sync, error) {
	if len(cfg.Content) == 0 {
		return nil, fmt.Errorf("sync %s: no content to fetch", src.Prefix())
	}
	if cfg.Every <= 0 {
		cfg.Every = DefaultEvery
	}
	if cfg.FirstDelay <= 0 {
		cfg.FirstDelay = DefaultFirstDelay
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	s := &Sync{cfg: cfg, src: src, trigger: make(chan struct{}, 1),
		log: cfg.Logger.With(zap.String("sync", src.Prefix())), status: Status{Name: src.Prefix()}}
	for _, c := range cfg.Content {
		f, err := c.compile()
		if err != nil {
			return nil, fmt.Errorf("sync %s: %w", src.Prefix(), err)
		}
		s.filters = append(s.filters, f)
	}
	return s, nil
}

// CheckContent checks filters as New would, without a source.
func CheckContent(cs []Content) error {
	if len(cs) == 0 {
		return errors.New("no content to fetch")
	}
	for _, c := range cs {
		if _, err := c.compile(); err != nil {
			return err
		}
	}
	return nil
}

// Name is the sync's prefix.
func (s *Sync) Name() string { return s.src.Prefix() }

// Status returns a copy of the sync's state.
func (s *Sync) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.status
	if st.LastRun != nil {
		r := *st.LastRun
		r.Errors = append([]string(nil), r.Errors...)
		st.LastRun = &r
	}
	return st
}

// Trigger asks the loop of Start for a run now; false when one is
// already asked for.
func (s *Sync) Trigger() bool {
	select {
	case s.trigger <- struct{}{}:
		return true
	default:
		return false
	}
}

// Start runs the schedule until ctx ends: a first run after FirstDelay,
// then one every Every, and one whenever Trigger asks.
func (s *Sync) Start(ctx context.Context) {
	next := time.Now().Add(jitter(s.cfg.FirstDelay, 2))
	s.mu.Lock()
	s.status.NextRun = &next
	s.mu.Unlock()
	for {
		t := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-s.trigger:
			t.Stop()
		}
		next = s.run(ctx, jitter(s.cfg.Every, 10))
	}
}

// jitter is d plus or minus up to d/div.
func jitter(d time.Duration, div int64) time.Duration {
	span := int64(d) / div
	if span <= 0 {
		return d
	}
	return d - time.Duration(span) + time.Duration(rand.Int64N(2*span+1))
}

// run is one run's shared state.
type run struct {
	s  *Sync
	mu sync.Mutex
	st RunStats
}

func (r *run) fail(what string, err error) {
	r.s.log.Warn("sync: fetch failed", zap.String("item", what), zap.Error(err))
	r.mu.Lock()
	defer r.mu.Unlock()
	r.st.ErrorCount++
	if len(r.st.Errors) < maxErrors {
		r.st.Errors = append(r.st.Errors, what+": "+err.Error())
	}
}

// skip counts an item a signature policy refused: not an error (the
// policy did its job), but logged, so an operator sees what was left out.
func (r *run) skip(what string, err error) {
	r.s.log.Info("sync: skipped, refused by signature policy", zap.String("item", what), zap.Error(err))
	r.count(func(st *RunStats) { st.SkippedUnsigned++ })
}

func (r *run) count(f func(*RunStats)) {
	r.mu.Lock()
	f(&r.st)
	r.mu.Unlock()
}

// job is one selected tag.
type job struct {
	f    filter
	repo string
	tag  string
}

// Run runs the sync once, now, and returns what it did. A run already
// in progress is waited for, then this one runs.
func (s *Sync) Run(ctx context.Context) RunStats {
	s.run(ctx, 0)
	s.mu.Lock()
	defer s.mu.Unlock()
	return *s.status.LastRun
}

// run runs once and, with every > 0, sets the next run that long after
// its end (in the same update as its end, so the status never shows a
// finished run without a next one); it returns that time.
func (s *Sync) run(ctx context.Context, every time.Duration) time.Time {
	s.runMu.Lock()
	defer s.runMu.Unlock()
	start := time.Now()
	s.mu.Lock()
	s.status.Running, s.status.LastStart, s.status.NextRun = true, &start, nil
	s.mu.Unlock()
	s.log.Info("sync run started")

	r := &run{s: s}
	jobs := make(chan job)
	var wg sync.WaitGroup
	for range s.cfg.Concurrency {
		wg.Go(func() {
			for j := range jobs {
				r.syncTag(ctx, j)
			}
		})
	}
	s.listJobs(ctx, r, jobs)
	close(jobs)
	wg.Wait()

	end := time.Now()
	st := r.st
	next := end.Add(every)
	// Metrics first: whoever sees the run ended in the status (an
	// operator's script, a test) finds it counted too.
	if s.cfg.Observer != nil {
		s.cfg.Observer.SyncRun(s.src.Prefix(), end.Sub(start), st)
	}
	s.mu.Lock()
	s.status.Running, s.status.LastEnd, s.status.LastRun = false, &end, &st
	if every > 0 {
		s.status.NextRun = &next
	}
	s.mu.Unlock()
	fields := []zap.Field{zap.Duration("took", end.Sub(start)), zap.Int("repositories", st.Repositories),
		zap.Int("tags", st.Tags), zap.Int("manifests_fetched", st.ManifestsFetched),
		zap.Int("blobs_fetched", st.BlobsFetched), zap.Int("skipped_unsigned", st.SkippedUnsigned), zap.Int("errors", st.ErrorCount)}
	if st.ErrorCount > 0 {
		s.log.Warn("sync run finished with errors", append(fields, zap.String("first_error", st.Errors[0]))...)
	} else {
		s.log.Info("sync run finished", fields...)
	}
	return next
}

// listJobs sends every selected tag to jobs.
func (s *Sync) listJobs(ctx context.Context, r *run, jobs chan<- job) {
	var catalog []string
	catalogRead := false
	seen := map[string]bool{}
	for _, f := range s.filters {
		repos := []string{f.repo}
		if f.glob() {
			if !catalogRead {
				catalogRead = true
				err := r.retry(ctx, func() (err error) { catalog, err = s.src.Repositories(ctx); return err })
				if err != nil {
					r.fail("catalog", err)
				}
			}
			repos = repos[:0]
			for _, name := range catalog {
				if f.matchRepo(name) {
					repos = append(repos, name)
				}
			}
		}
		for _, repo := range repos {
			var tags []string
			err := r.retry(ctx, func() (err error) { tags, err = s.src.Tags(ctx, repo); return err })
			if err != nil {
				r.fail(repo, err)
				continue
			}
			selected := f.selectTags(tags)
			r.count(func(st *RunStats) {
				if !seen[repo] {
					seen[repo] = true
					st.Repositories++
				}
				st.Tags += len(selected)
			})
			for _, t := range selected {
				select {
				case jobs <- job{f: f, repo: repo, tag: t}:
				case <-ctx.Done():
					return
				}
			}
		}
	}
}

// retry runs fn up to `attempts` times while upstream fails for now,
// waiting out any hold upstream asked for (a 429's Retry-After, to sync
// or to a pull) before each attempt.
func (r *run) retry(ctx context.Context, fn func() error) error {
	var err error
	for i := range attempts {
		if ctx.Err() != nil {
			// Stopping (a reload): no new upstream exchange, which
			// would outlive ctx (exchanges shared with pulls do).
			return ctx.Err()
		}
		if werr := r.waitHold(ctx); werr != nil {
			return werr
		}
		if err = fn(); err == nil || !temporary(err) || ctx.Err() != nil {
			return err
		}
		if i < attempts-1 {
			t := time.NewTimer(time.Duration(i+1) * time.Second)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
		}
	}
	return err
}

// waitHold waits until upstream's last Retry-After has passed.
func (r *run) waitHold(ctx context.Context) error {
	until := r.s.src.HoldUntil()
	if until.IsZero() {
		return nil
	}
	t := time.NewTimer(time.Until(until))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// temporary: upstream unreachable, overloaded or failing, or too slow.
func temporary(err error) bool {
	var ue *upstream.Error
	if errors.As(err, &ue) {
		return ue.Temporary()
	}
	var re *registry.Error
	if errors.As(err, &re) {
		return re.Status == 429 || re.Status >= 500
	}
	return errors.Is(err, context.DeadlineExceeded)
}

// syncTag brings one tag and what it selects into the store.
func (r *run) syncTag(ctx context.Context, j job) {
	what := j.repo + ":" + j.tag
	var man registry.SyncManifest
	var fetched bool
	err := r.retry(ctx, func() (err error) { man, fetched, err = r.s.src.Tag(ctx, j.repo, j.tag); return err })
	if errors.Is(err, registry.ErrSignaturePolicy) {
		r.skip(what, err)
		return
	}
	if err != nil {
		r.fail(what, err)
		return
	}
	if fetched {
		r.count(func(st *RunStats) { st.ManifestsFetched++ })
	}
	if !r.walk(ctx, j, man, 0, &walked{seen: map[cache.Digest]bool{}, blobs: map[cache.Digest]bool{}}) {
		return // a sync_into's tag stays where it was: the next run tries again
	}
	if err := r.retry(ctx, func() error { return man.Commit(ctx) }); err != nil {
		r.fail(what, err)
	}
}

// descPlatform is a descriptor's platform.
type descPlatform struct {
	OS           string `json:"os"`
	Architecture string `json:"architecture"`
	Variant      string `json:"variant"`
}

type desc struct {
	MediaType string        `json:"mediaType"`
	Digest    string        `json:"digest"`
	URLs      []string      `json:"urls"`
	Platform  *descPlatform `json:"platform"`
}

type doc struct {
	Manifests []desc `json:"manifests"`
	Config    *desc  `json:"config"`
	Layers    []desc `json:"layers"`
}

// walked is what the walk of one tag has been through: each child
// manifest's result by digest, so that a digest an index lists many
// times (or several indexes list) is walked once.
type walked struct {
	seen  map[cache.Digest]bool
	blobs map[cache.Digest]bool // each blob's result, as seen
	over  bool                  // past maxTagManifests: the tag failed
}

// walk fetches what man references: the children of an index that the
// platforms select (following nested indexes), or an image's config and
// layers. It reports whether all of it is stored (a skip by the
// signature policy counts as stored: the policy keeps it out).
func (r *run) walk(ctx context.Context, j job, man registry.SyncManifest, depth int, w *walked) (whole bool) {
	whole = true
	var d doc
	if err := json.Unmarshal(man.Body, &d); err != nil {
		r.fail(j.repo+"@"+man.Digest.String(), fmt.Errorf("manifest unreadable: %w", err))
		return false
	}
	if d.Config == nil && d.Manifests != nil {
		if depth >= maxDepth {
			r.fail(j.repo+"@"+man.Digest.String(), errors.New("indexes nested too deep"))
			return false
		}
		for _, c := range d.Manifests {
			if w.over {
				return false
			}
			nested := strings.Contains(c.MediaType, "index") || strings.Contains(c.MediaType, "manifest.list")
			if !nested && !j.f.wantPlatform(c.Platform) {
				continue
			}
			cd, err := cache.ParseDigest(c.Digest)
			if err != nil {
				r.fail(j.repo+"@"+man.Digest.String(), fmt.Errorf("child %q: %w", c.Digest, err))
				whole = false
				continue
			}
			if done, ok := w.seen[cd]; ok {
				whole = whole && done
				continue
			}
			if len(w.seen) >= maxTagManifests {
				w.over = true
				r.fail(j.repo+":"+j.tag, fmt.Errorf("its indexes list more than %d manifests", maxTagManifests))
				return false
			}
			w.seen[cd] = false // until walked: a failure below leaves it so
			var child registry.SyncManifest
			var fetched bool
			err = r.retry(ctx, func() (err error) { child, fetched, err = r.s.src.Manifest(ctx, j.repo, man, cd); return err })
			if errors.Is(err, registry.ErrSignaturePolicy) {
				r.skip(j.repo+"@"+cd.String(), err)
				w.seen[cd] = true
				continue
			}
			if err != nil {
				r.fail(j.repo+"@"+cd.String(), err)
				whole = false
				continue
			}
			if fetched {
				r.count(func(st *RunStats) { st.ManifestsFetched++ })
			}
			done := r.walk(ctx, j, child, depth+1, w)
			w.seen[cd] = done
			whole = done && whole
		}
		return whole
	}
	blobs := d.Layers
	if d.Config != nil {
		blobs = append([]desc{*d.Config}, blobs...)
	}
	for _, b := range blobs {
		if len(b.URLs) > 0 || strings.Contains(b.MediaType, ".nondistributable.") || strings.Contains(b.MediaType, ".foreign.") {
			continue // not expected in a registry
		}
		bd, err := cache.ParseDigest(b.Digest)
		if err != nil {
			r.fail(j.repo+"@"+man.Digest.String(), fmt.Errorf("blob %q: %w", b.Digest, err))
			whole = false
			continue
		}
		if done, ok := w.blobs[bd]; ok {
			whole = whole && done
			continue
		}
		var fetched bool
		err = r.retry(ctx, func() (err error) { fetched, err = r.s.src.Blob(ctx, j.repo, bd); return err })
		w.blobs[bd] = err == nil
		if err != nil {
			r.fail(j.repo+"@"+bd.String(), err)
			whole = false
			continue
		}
		if fetched {
			r.count(func(st *RunStats) { st.BlobsFetched++ })
		}
	}
	return whole
}
