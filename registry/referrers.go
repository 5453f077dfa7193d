package registry

import (
	"context"
	"encoding/json"
	"errors"
	"hash/maphash"
	"io"
	"net/http"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/caddy-oci/caddy-oci/cache"
)

type referrerDescriptor struct {
	MediaType    string            `json:"mediaType"`
	Digest       string            `json:"digest"`
	Size         int64             `json:"size"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
}

type referrerIndex struct {
	SchemaVersion int                  `json:"schemaVersion"`
	MediaType     string               `json:"mediaType"`
	Manifests     []referrerDescriptor `json:"manifests"`
}

// referrerPage is how many referrers are read from the store at once. A
// referrer's record holds its manifest's annotations, which may be as
// large as the manifest (megabytes): the list of one subject is read and
// sent a page at a time, so what a request holds does not grow with it.
const referrerPage = 2

// Why reading referrers takes turns by size:
//
// A page of referrers is read whole from the store (annotations and
// all), decoded, and held until its descriptors are sent; each record
// may be as large as a manifest, and nothing bounded how many pages were
// held at once: 20 readers of a subject with 8 referrers of 4 MiB of
// annotations grew the heap by 1.6 GiB, and anyone who may pull could
// grow it further with more clients. So a page read holds, before the
// store is read, what its records may take at most (twice the manifest
// limit each: record and its encoding) against a budget of its own (not
// manifestServe's: listings must not hold up pulls), keeps after the
// read only what the records' sizes need (nothing for small ones, nearly
// all of them), and gives that back once the page is sent (within a
// write deadline for a large page, so a client that stops reading does
// not keep it). A page is never read while holding another's share.
const referrerReadBudget = 64 << 20

var referrerReads = semaphore.NewWeighted(referrerReadBudget)

// referrerSizes remembers, per repository and subject, the largest
// referrer seen there (0: none, or all small), so that the list of a
// subject whose referrers are small (nearly all: signatures, SBOM
// descriptors) is read without waiting behind large ones, as a small
// manifest is served. A subject never listed counts as having referrers
// of max_manifest_size until it has been; a push of a large referrer
// raises its subject's size at once (on this process: another replica
// learns it at its next read of the list, which then waits for its share
// after the read).
//
// Why a subject never listed counts as max_manifest_size, even after a
// restart, rather than what its referrers really are: what a page costs
// is known only once its records are read, and reading them is what the
// share bounds. Counting what is really read would take a second query
// that answers the sizes of a page's referrers without their annotations
// (badger's value sizes, an octet_length in PostgreSQL) in each store and
// each store wrapper (single node, badgermeta, pgmeta, substore, the
// pending store), or sizes kept across restarts beside the records. The
// cost now is bounded and passes: each subject's first list after a
// start waits for a large share once; its answer sets the size, so the
// next lists of it wait for what they read.
var referrerSizes = struct {
	mu   sync.Mutex
	m    map[uint64]int64
	seed maphash.Seed
}{seed: maphash.MakeSeed()}

func referrerSizeKey(repo string, d cache.Digest) uint64 {
	return maphash.String(referrerSizes.seed, repo+"@"+d.String())
}

// referrerSize is the largest referrer of d in repo seen, if any was.
func referrerSize(repo string, d cache.Digest) (int64, bool) {
	referrerSizes.mu.Lock()
	defer referrerSizes.mu.Unlock()
	n, ok := referrerSizes.m[referrerSizeKey(repo, d)]
	return n, ok
}

// setReferrerSize records size as the largest referrer of d in repo, or
// only raises it (raise: a push, or a page of a list not read whole).
func setReferrerSize(repo string, d cache.Digest, size int64, raise bool) {
	referrerSizes.mu.Lock()
	defer referrerSizes.mu.Unlock()
	if referrerSizes.m == nil || len(referrerSizes.m) >= maxManifestSizes {
		referrerSizes.m = make(map[uint64]int64)
	}
	k := referrerSizeKey(repo, d)
	if old, ok := referrerSizes.m[k]; raise && ok {
		size = max(size, old)
	} else if raise && !ok {
		return // unseen stays unseen: max_manifest_size
	}
	referrerSizes.m[k] = size
}

// manifestStored notes what a manifest of size bytes just stored in repo
// (pushed, or fetched by a mirror) means for the lists of referrers.
func manifestStored(repo string, m cache.Manifest, size int64) {
	if !m.Subject.IsZero() {
		// Lists of its subject that read it count it from now on.
		setReferrerSize(repo, m.Subject, size, true)
	}
	if _, seen := referrerSize(repo, m.Digest); !seen {
		// A manifest just stored has, nearly always, no referrers yet:
		// its first list (a pull's signature check) need not wait behind
		// large ones. One that arrived before it is counted when a list
		// reads it, before that list waits for its share.
		setReferrerSize(repo, m.Digest, 0, false)
	}
}

// eachReferrer calls fn with the manifests in repo whose subject is d, in
// digest order, a store page at a time (more: whether pages follow),
// until fn returns false or an error; fn may keep nothing of a page past
// its return. limit is the largest a manifest may be. An unknown
// repository has none.
func eachReferrer(ctx context.Context, store Store, repo string, d cache.Digest, limit int64, fn func(page []cache.Manifest, more bool) (bool, error)) error {
	after := ""
	largest := int64(0) // of the referrers read so far
	for {
		each, known := referrerSize(repo, d)
		if !known {
			each = max(limit, smallManifest)
		}
		held := min(serveShare(referrerPage*each), referrerReadBudget)
		if held > 0 {
			if err := referrerReads.Acquire(ctx, held); err != nil {
				return err
			}
		}
		list, more, err := store.Referrers(ctx, repo, d, after, referrerPage)
		if err == nil {
			var size int64
			for _, m := range list {
				size += m.Size
				largest = max(largest, m.Size)
			}
			setReferrerSize(repo, d, largest, more && len(list) > 0) // exact once the whole list was read
			switch need := min(serveShare(size), referrerReadBudget); {
			case need < held:
				referrerReads.Release(held - need)
				held = need
			case need > held:
				// Larger than this process knew (pushed on another
				// replica): its share, taken while holding none, so that
				// nothing waits for more while holding some.
				if held > 0 {
					referrerReads.Release(held)
				}
				held = 0
				if aerr := referrerReads.Acquire(ctx, need); aerr != nil {
					return aerr
				}
				held = need
			}
		}
		ok := false
		if errors.Is(err, cache.ErrRepoUnknown) {
			err = nil
		} else if err == nil {
			ok, err = fn(list, more && len(list) > 0)
		}
		if held > 0 {
			referrerReads.Release(held)
		}
		if err != nil || !ok || !more || len(list) == 0 {
			return err
		}
		after = list[len(list)-1].Digest.String()
	}
}

// referrers serves GET /v2/<name>/referrers/<digest> (GET only): an image index of
// the manifests whose subject is the digest, optionally filtered by
// artifactType. An unknown subject (or repository) is an empty index.
// A list longer than one store page is streamed (one descriptor at a
// time, without Content-Length); a store failure after the first bytes
// breaks the transfer rather than end a short index.
func (h *Handler) referrers(w http.ResponseWriter, r *http.Request, rc *request) error {
	d, err := parseDigestArg(rc.arg)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	filter, filtered := q.Get("artifactType"), q.Has("artifactType")
	if filtered {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	ctx := r.Context()
	var enc *json.Encoder // set once streaming has begun
	sent := 0
	answered := false // a list of one page, answered whole with its length
	send := func(page []cache.Manifest, more bool) (bool, error) {
		var descs []referrerDescriptor
		var size int64
		for _, m := range page {
			if filtered && m.ArtifactType != filter {
				continue
			}
			descs = append(descs, referrerDescriptor{
				MediaType:    m.MediaType,
				Digest:       m.Digest.String(),
				Size:         m.Size,
				ArtifactType: m.ArtifactType,
				Annotations:  m.Annotations,
			})
			size += m.Size
		}
		// The page's share is held until it is out: a client that reads
		// it slowly holds it for transferTime at most.
		ctl := http.NewResponseController(w)
		deadline := size > smallManifest && ctl.SetWriteDeadline(time.Now().Add(currentManifestLimits.Load().transferTime(time.Minute, size))) == nil
		defer func() {
			if deadline {
				_ = ctl.SetWriteDeadline(time.Time{})
			}
		}()
		if enc == nil && !more {
			// Written while the page's share is held.
			answered = true
			if descs == nil {
				descs = []referrerDescriptor{}
			}
			return false, writeJSON(w, r, MediaTypeOCIIndex, referrerIndex{SchemaVersion: 2, MediaType: MediaTypeOCIIndex, Manifests: descs})
		}
		if enc == nil {
			w.Header().Set("Content-Type", MediaTypeOCIIndex)
			w.WriteHeader(http.StatusOK)
			if _, err := io.WriteString(w, `{"schemaVersion":2,"mediaType":"`+MediaTypeOCIIndex+`","manifests":[`); err != nil {
				return false, nil // the client left
			}
			enc = json.NewEncoder(w)
		}
		for _, desc := range descs {
			if err := writeReferrer(w, enc, desc, sent == 0); err != nil {
				return false, nil // the client left
			}
			sent++
		}
		if deadline {
			_ = ctl.Flush()
		}
		return true, nil
	}
	err = eachReferrer(ctx, h.cfg.Store, rc.name, d, h.cfg.MaxManifestSize, send)
	if answered {
		return nil
	}
	if enc == nil {
		if err != nil {
			return errInternal(err)
		}
		// An unknown repository: no referrers.
		return writeJSON(w, r, MediaTypeOCIIndex, referrerIndex{SchemaVersion: 2, MediaType: MediaTypeOCIIndex, Manifests: []referrerDescriptor{}})
	}
	if err != nil {
		breakTransfer(w) // headers and a part are out
	}
	_, _ = io.WriteString(w, "]}")
	return nil
}

// writeReferrer writes one descriptor of a streamed index, after a comma
// unless it is the first.
func writeReferrer(w io.Writer, enc *json.Encoder, d referrerDescriptor, isFirst bool) error {
	if !isFirst {
		if _, err := io.WriteString(w, ","); err != nil {
			return err
		}
	}
	return enc.Encode(d) // its newline is JSON whitespace
}
