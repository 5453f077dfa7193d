package caddymodule

import (
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/registry/mirrorsync"
)

// collectors are created once per process and registered on the metrics
// registry of every config that has an oci_registry handler, so counters
// keep counting across reloads.
var collectors = struct {
	once          sync.Once
	requests      *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	bytesReceived prometheus.Counter
	bytesSent     prometheus.Counter
	uploads       prometheus.Counter
	uploadBytes   prometheus.Counter

	mirrorLookups    *prometheus.CounterVec
	mirrorMissesHeld *prometheus.CounterVec
	mirrorBytes      *prometheus.CounterVec
	upstreamReqs     *prometheus.CounterVec
	upstreamWait     *prometheus.HistogramVec
	mirrorFillTime   *prometheus.HistogramVec

	mirrorCacheBytes   prometheus.Gauge
	mirrorEvictions    prometheus.Counter
	mirrorEvictedBytes prometheus.Counter

	storageFree    *prometheus.GaugeVec
	storageReserve *prometheus.GaugeVec
	reserveReached *prometheus.GaugeVec

	syncRuns        *prometheus.CounterVec
	syncDuration    *prometheus.HistogramVec
	syncFetched     *prometheus.CounterVec
	syncErrors      *prometheus.CounterVec
	syncSkipped     *prometheus.CounterVec
	syncLastSuccess *prometheus.GaugeVec

	loginsThrottled *prometheus.CounterVec

	scrubBytes    *prometheus.CounterVec
	scrubDamaged  *prometheus.CounterVec
	scrubLastPass *prometheus.GaugeVec
}{}

// metricsNamespace is the namespace of every metric of the module.
const metricsNamespace = "caddy_oci"

func newCounter(name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Namespace: metricsNamespace, Name: name, Help: help})
}

func newCounterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metricsNamespace, Name: name, Help: help}, labels)
}

func newGauge(name, help string) prometheus.Gauge {
	return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: metricsNamespace, Name: name, Help: help})
}

func newGaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: metricsNamespace, Name: name, Help: help}, labels)
}

func newHistogramVec(name string, buckets []float64, help string, labels ...string) *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: metricsNamespace, Name: name, Help: help, Buckets: buckets}, labels)
}

func initCollectors() {
	collectors.requests = newCounterVec("requests_total",
		"Registry API requests by operation and response status code.",
		"op", "code")
	collectors.duration = newHistogramVec("request_duration_seconds", prometheus.ExponentialBuckets(0.001, 4, 10), // 1ms .. ~4.4min
		"Time to serve a registry API request, by operation.",
		"op")
	collectors.bytesReceived = newCounter("bytes_received_total", "Request body bytes read by the registry API.")
	collectors.bytesSent = newCounter("bytes_sent_total", "Response body bytes written by the registry API.")
	collectors.uploads = newCounter("uploads_total", "Blob uploads completed.")
	collectors.uploadBytes = newCounter("upload_bytes_total", "Bytes of completed blob uploads.")
	collectors.mirrorLookups = newCounterVec("mirror_lookups_total",
		"Mirrored blob, manifest and referrers requests by registry, kind and result (hit: served from the store, or the referrers answer kept; miss: fetched upstream).",
		"registry", "kind", "result")
	collectors.mirrorMissesHeld = newCounterVec("mirror_misses_held_total",
		"Requests for content a mirror does not hold that were answered without asking upstream, by registry and reason (not_found: the upstream's 404 remembered, not_found_ttl; budget: 429, the client past max_misses_per_client).",
		"registry", "reason")
	collectors.mirrorBytes = newCounterVec("mirror_bytes_total",
		"Mirrored content bytes by registry and source (cache: sent from the store, upstream: fetched).",
		"registry", "source")
	collectors.upstreamReqs = newCounterVec("mirror_upstream_requests_total",
		"HTTP exchanges with upstream registries by registry, method and status (0: connection failed).",
		"registry", "method", "code")
	collectors.upstreamWait = newHistogramVec("mirror_upstream_wait_seconds", prometheus.ExponentialBuckets(0.001, 4, 9),
		"Time upstream registries took to send the headers of their answers (redirects followed), by registry and what was asked (manifest, blob, token, other): upstream's share of a cold pull's wait.",
		"registry", "kind")
	collectors.mirrorFillTime = newHistogramVec("mirror_fill_duration_seconds", prometheus.ExponentialBuckets(0.01, 4, 9),
		"Time to fetch one blob from upstream into the store, by registry and result.",
		"registry", "result")
	collectors.mirrorCacheBytes = newGauge("mirror_cache_bytes",
		"Bytes of mirrored content in the store (what only mirrors hold; mirror_cache_size limits it).")
	collectors.mirrorEvictions = newCounter("mirror_evictions_total",
		"Mirrored blobs and manifests evicted to keep the store under mirror_cache_size.")
	collectors.mirrorEvictedBytes = newCounter("mirror_evicted_bytes_total",
		"Bytes of mirrored content evicted to keep the store under mirror_cache_size.")
	collectors.storageFree = newGaugeVec("storage_free_bytes",
		"Free bytes on the filesystem of a storage folder, as last measured.",
		"storage")
	collectors.storageReserve = newGaugeVec("storage_reserve_bytes",
		"Free bytes that new content leaves on the filesystem of a storage folder (storage_reserve).",
		"storage")
	collectors.reserveReached = newGaugeVec("storage_reserve_reached",
		"1 while a storage folder's free space is at or below its reserve and new content is refused with 507, else 0.",
		"storage")
	collectors.syncRuns = newCounterVec("sync_runs_total",
		"Scheduled sync runs by sync (mirror or sync_into prefix) and result (ok, or error: at least one item failed).",
		"sync", "result")
	collectors.syncDuration = newHistogramVec("sync_run_duration_seconds", prometheus.ExponentialBuckets(0.1, 4, 10), // 100ms .. ~7h
		"Time of one scheduled sync run, by sync.",
		"sync")
	collectors.syncFetched = newCounterVec("sync_fetched_total",
		"Manifests and blobs scheduled sync fetched from upstream, by sync and kind (manifest, blob).",
		"sync", "kind")
	collectors.syncErrors = newCounterVec("sync_errors_total",
		"Items (listings, tags, manifests, blobs) scheduled sync failed to fetch, by sync.",
		"sync")
	collectors.syncSkipped = newCounterVec("sync_skipped_unsigned_total",
		"Tags and platform manifests scheduled sync did not store because a signature policy (require_signature) refused them, by sync.",
		"sync")
	collectors.syncLastSuccess = newGaugeVec("sync_last_success_timestamp_seconds",
		"Unix time at which the last scheduled sync run without errors ended, by sync.",
		"sync")
	collectors.loginsThrottled = newCounterVec("logins_throttled_total",
		"Logins answered 429 without their password being checked, because the client address (bound=client) or the account name (bound=account) used up its failed logins (auth login_limit).",
		"bound")
	collectors.scrubBytes = newCounterVec("scrub_bytes_total",
		"Stored blob bytes the scrub read and hashed, by storage.",
		"storage")
	collectors.scrubDamaged = newCounterVec("scrub_damaged_blobs_total",
		"Stored blobs the scrub found not to hold their digest's bytes, by storage (the log names each).",
		"storage")
	collectors.scrubLastPass = newGaugeVec("scrub_last_pass_timestamp_seconds",
		"Unix time at which the last complete scrub pass ended, by storage.",
		"storage")
}

// scrubMetrics is the cache.ScrubObserver of one storage.
type scrubMetrics struct{ storage string }

func (m scrubMetrics) Scrubbed(n int64) {
	collectors.scrubBytes.WithLabelValues(m.storage).Add(float64(n))
}

func (m scrubMetrics) ScrubFoundDamaged() {
	collectors.scrubDamaged.WithLabelValues(m.storage).Inc()
}

func (m scrubMetrics) ScrubPassDone(at time.Time) {
	collectors.scrubLastPass.WithLabelValues(m.storage).Set(float64(at.UnixNano()) / 1e9)
}

// loginThrottled counts a login refused by login_limit.
func loginThrottled(account bool) {
	collectors.once.Do(initCollectors)
	bound := "client"
	if account {
		bound = "account"
	}
	collectors.loginsThrottled.WithLabelValues(bound).Inc()
}

// SyncRun implements mirrorsync.Observer.
func (*metricsObserver) SyncRun(name string, d time.Duration, st mirrorsync.RunStats) {
	result := "ok"
	if st.ErrorCount > 0 {
		result = "error"
		collectors.syncErrors.WithLabelValues(name).Add(float64(st.ErrorCount))
	} else {
		collectors.syncLastSuccess.WithLabelValues(name).SetToCurrentTime()
	}
	collectors.syncRuns.WithLabelValues(name, result).Inc()
	collectors.syncDuration.WithLabelValues(name).Observe(d.Seconds())
	collectors.syncFetched.WithLabelValues(name, "manifest").Add(float64(st.ManifestsFetched))
	collectors.syncFetched.WithLabelValues(name, "blob").Add(float64(st.BlobsFetched))
	collectors.syncSkipped.WithLabelValues(name).Add(float64(st.SkippedUnsigned))
}

// StorageSpace implements cache.SpaceObserver.
func (*metricsObserver) StorageSpace(dir string, free, reserve int64, reached bool) {
	collectors.storageFree.WithLabelValues(dir).Set(float64(free))
	collectors.storageReserve.WithLabelValues(dir).Set(float64(reserve))
	v := 0.0
	if reached {
		v = 1
	}
	collectors.reserveReached.WithLabelValues(dir).Set(v)
}

// MirrorCacheSize implements cache.MirrorCacheObserver.
func (*metricsObserver) MirrorCacheSize(n int64) {
	collectors.mirrorCacheBytes.Set(float64(n))
}

// MirrorEvicted implements cache.MirrorCacheObserver.
func (*metricsObserver) MirrorEvicted(items int, n int64) {
	collectors.mirrorEvictions.Add(float64(items))
	collectors.mirrorEvictedBytes.Add(float64(n))
}

// MirrorLookup implements registry.MirrorObserver.
func (*metricsObserver) MirrorLookup(reg, kind string, hit bool) {
	result := "miss"
	if hit {
		result = "hit"
	}
	collectors.mirrorLookups.WithLabelValues(reg, kind, result).Inc()
}

// MirrorMissHeld implements registry.MissObserver.
func (*metricsObserver) MirrorMissHeld(reg, reason string) {
	collectors.mirrorMissesHeld.WithLabelValues(reg, reason).Inc()
}

// MirrorBytes implements registry.MirrorObserver.
func (*metricsObserver) MirrorBytes(reg, source string, n int64) {
	if n > 0 {
		collectors.mirrorBytes.WithLabelValues(reg, source).Add(float64(n))
	}
}

// UpstreamRequest implements registry.MirrorObserver.
func (*metricsObserver) UpstreamRequest(reg, method string, status int) {
	collectors.upstreamReqs.WithLabelValues(reg, method, strconv.Itoa(status)).Inc()
}

// UpstreamWait implements registry.MirrorObserver.
func (*metricsObserver) UpstreamWait(reg, kind string, wait time.Duration) {
	collectors.upstreamWait.WithLabelValues(reg, kind).Observe(wait.Seconds())
}

// MirrorFill implements registry.MirrorObserver.
func (*metricsObserver) MirrorFill(reg string, _ int64, d time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "failed"
	}
	collectors.mirrorFillTime.WithLabelValues(reg, result).Observe(d.Seconds())
}

// metricsObserver is the registry.Observer that feeds the collectors.
type metricsObserver struct{}

// newMetricsObserver registers the collectors on reg, tolerating their
// registration by an earlier handler or config.
func newMetricsObserver(reg *prometheus.Registry) (*metricsObserver, error) {
	collectors.once.Do(initCollectors)
	if reg == nil {
		return &metricsObserver{}, nil
	}
	for _, c := range []prometheus.Collector{
		collectors.requests, collectors.duration,
		collectors.bytesReceived, collectors.bytesSent,
		collectors.uploads, collectors.uploadBytes,
		collectors.mirrorLookups, collectors.mirrorBytes, collectors.mirrorMissesHeld,
		collectors.upstreamReqs, collectors.upstreamWait, collectors.mirrorFillTime,
		collectors.mirrorCacheBytes, collectors.mirrorEvictions, collectors.mirrorEvictedBytes,
		collectors.storageFree, collectors.storageReserve, collectors.reserveReached,
		collectors.syncRuns, collectors.syncDuration, collectors.syncFetched,
		collectors.syncErrors, collectors.syncSkipped, collectors.syncLastSuccess,
		collectors.loginsThrottled,
		collectors.scrubBytes, collectors.scrubDamaged, collectors.scrubLastPass,
	} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) && are.ExistingCollector == c {
				continue
			}
			return nil, err
		}
	}
	return &metricsObserver{}, nil
}

// ObserveRequest implements registry.Observer.
func (*metricsObserver) ObserveRequest(op string, status int, bytesIn, bytesOut int64, d time.Duration) {
	collectors.requests.WithLabelValues(op, strconv.Itoa(status)).Inc()
	collectors.duration.WithLabelValues(op).Observe(d.Seconds())
	if bytesIn > 0 {
		collectors.bytesReceived.Add(float64(bytesIn))
	}
	if bytesOut > 0 {
		collectors.bytesSent.Add(float64(bytesOut))
	}
}

// UploadCommitted implements registry.Observer.
func (*metricsObserver) UploadCommitted(size int64) {
	collectors.uploads.Inc()
	if size > 0 {
		collectors.uploadBytes.Add(float64(size))
	}
}

var (
	_ cache.MirrorCacheObserver = (*metricsObserver)(nil)
	_ mirrorsync.Observer       = (*metricsObserver)(nil)
)
