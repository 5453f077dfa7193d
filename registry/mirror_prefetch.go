package registry

// Prefetch (a mirror's Prefetch setting): once a client GETs an image
// manifest the mirror had to fetch from upstream, the fills of its config
// and layers start at once, a few at a time, instead of each when the
// client asks for it. The client's own blob GETs then join fills already
// on their way (or find the blobs in), so upstream's setup of each blob
// (a token, a redirect to a CDN, its first byte) overlaps the client's
// own work, and an image whose layers a client fetches three at a time
// (containerd's and Docker's default) comes from upstream with more at
// once. Off by default: a client that only looks at a manifest (skopeo
// inspect, crane manifest) then makes the mirror fetch the whole image.
//
// What a prefetch may take: a fill slot only while at least half of the
// mirror's slots stay free for clients' own fills, never waiting for
// one; prefetchParallel fills of one manifest at once; one prefetch per
// manifest at a time; and each fill one miss of the client whose GET
// started it (max_misses_per_client), as that client's own blob GET would
// have been: without that, one anonymous GET of a 500-layer manifest made
// 501 upstream requests whatever the client's budget. The prefetch stops
// where the budget ends; the client's own GETs then meet it themselves.
// Blobs a manifest declares larger than the mirror's MaxBlobSize, with
// URLs of their own (foreign layers), or that the store holds or fills
// already are left alone. An index starts nothing: the
// client's platform's manifest, when it asks for it, does.

import (
	"context"
	"encoding/json"
	"errors"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache"
)

// prefetchParallel bounds the fills one manifest's prefetch runs at once:
// most images' layers in one or two rounds of upstream's round trip (a
// client fetches three at a time), few enough that one image does not
// take the upstream's connections from everyone else.
const prefetchParallel = 8

// prefetch starts the fills of manifest res's blobs for rc's repository,
// in the background, if the mirror prefetches. ctx is the request's; the
// prefetch keeps its values (a store made of several reads the
// repository from it), not its end.
func (h *Handler) prefetch(ctx context.Context, rc *request, res mirroredManifest) {
	m := rc.mirror
	if !m.cfg.Prefetch || m.copy {
		return
	}
	blobs := prefetchBlobs(res.body, m.cfg.MaxBlobSize)
	if len(blobs) == 0 {
		return
	}
	key := rc.name + "@" + res.m.Digest.String()
	if _, running := m.prefetching.LoadOrStore(key, struct{}{}); running {
		return
	}
	ctx = context.WithoutCancel(ctx)
	// Whom to charge, read now: the request is over when the fills start.
	client := h.missClient(rc)
	go func() {
		defer m.prefetching.Delete(key)
		h.prefetchFills(ctx, rc, client, blobs)
	}()
}

// prefetchFills starts a fill of each of blobs that the store neither
// holds nor fills, keeping at most prefetchParallel of its own running,
// and stops at the first it may not start (no spare slot, client's miss
// budget spent, storage full, the store failing): what is left is fetched
// when clients ask. client is whose budget pays ("": none is kept).
func (h *Handler) prefetchFills(ctx context.Context, rc *request, client string, blobs []cache.Digest) {
	m := rc.mirror
	store := h.cfg.Store
	running := make(chan struct{}, prefetchParallel)
	stop := h.pending.stopping()
	for _, d := range blobs {
		select {
		case running <- struct{}{}:
		case <-stop:
			return // the store is about to close
		}
		select {
		case <-stop:
			return // it came with the turn
		default:
		}
		if store.Filling(ctx, d) != nil {
			<-running
			continue
		}
		if _, err := store.HasBlob(ctx, rc.name, d); err == nil {
			<-running
			continue
		}
		// Charged as the client's GET of the blob would be, so that GET,
		// joining this fill, is not charged again.
		if client != "" {
			if _, ok := m.misses.take(client, notFoundKey(rc.name, "blob", d.String()), m.now()); !ok {
				<-running
				return
			}
		}
		f, started, err := store.FillAdmitted(ctx, rc.name, d, m.blobSource(rc.name, d), m.slots.takeSpare)
		if err != nil {
			<-running
			if !errors.Is(err, errNoFillSlot) {
				h.cfg.Logger.Debug("prefetch stopped", zap.String("repo", rc.name),
					zap.String("digest", d.String()), zap.Error(err))
			}
			return
		}
		if !started {
			<-running // stored meanwhile, or another replica fills it
			continue
		}
		h.observeFill(m, f)
		go func() {
			<-f.Done()
			<-running
		}()
	}
}

// prefetchBlobs returns the config and layers of image manifest body that
// a prefetch fetches: each once, in the manifest's order (the config
// first, as clients ask for it), none declared over maxBlob (0: no limit)
// or with URLs of its own. Nil for an index or what does not decode.
func prefetchBlobs(body []byte, maxBlob int64) []cache.Digest {
	var doc manifestDoc
	if json.Unmarshal(body, &doc) != nil || doc.Config == nil || doc.isIndex() {
		return nil
	}
	descs := append([]descriptor{*doc.Config}, doc.Layers...)
	seen := make(map[cache.Digest]bool, len(descs))
	var out []cache.Digest
	for _, desc := range descs {
		d, err := cache.ParseDigest(desc.Digest)
		if err != nil || seen[d] || len(desc.URLs) > 0 || desc.Size < 0 || (maxBlob > 0 && desc.Size > maxBlob) {
			continue
		}
		seen[d] = true
		out = append(out, d)
	}
	return out
}
