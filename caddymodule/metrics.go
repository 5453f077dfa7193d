package caddymodule

import (
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
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
}{}

func initCollectors() {
	const ns = "caddy_oci"
	collectors.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns,
		Name:      "requests_total",
		Help:      "Registry API requests by operation and response status code.",
	}, []string{"op", "code"})
	collectors.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: ns,
		Name:      "request_duration_seconds",
		Help:      "Time to serve a registry API request, by operation.",
		Buckets:   prometheus.ExponentialBuckets(0.001, 4, 10), // 1ms .. ~4.4min
	}, []string{"op"})
	collectors.bytesReceived = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: ns,
		Name:      "bytes_received_total",
		Help:      "Request body bytes read by the registry API.",
	})
	collectors.bytesSent = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: ns,
		Name:      "bytes_sent_total",
		Help:      "Response body bytes written by the registry API.",
	})
	collectors.uploads = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: ns,
		Name:      "uploads_total",
		Help:      "Blob uploads completed.",
	})
	collectors.uploadBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: ns,
		Name:      "upload_bytes_total",
		Help:      "Bytes of completed blob uploads.",
	})
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
