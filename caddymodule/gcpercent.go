package caddymodule

import (
	"os"
	"runtime/debug"
	"sync"

	"go.uber.org/zap"
)

// defaultGCPercent is the Go garbage collector's target (GOGC) this
// module sets when the operator set none: the heap may grow to 1.5 times
// what is live before a collection, not twice. The metadata database's
// compactions build tables in bursts of short-lived buffers (a few MiB
// each, a dozen at once), and at 100 the runtime let the heap reach twice
// those bursts: at 50,000 images that was what kept the peak RSS above
// 150 MiB. The cost is more frequent collections of a heap of a few tens
// of MiB; the figures in bench/README.md show the rates did not drop.
// Caddy's own soft memory limit (from the cgroup or the machine's memory)
// is far above such a heap and never bounds it.
const defaultGCPercent = 50

var gcPercentOnce sync.Once

// setDefaultGCPercent applies defaultGCPercent once per process, unless
// GOGC is set (the operator's choice, including GOGC=100 for the
// runtime's default).
func setDefaultGCPercent(log *zap.Logger) {
	gcPercentOnce.Do(func() {
		if _, set := os.LookupEnv("GOGC"); set {
			return
		}
		debug.SetGCPercent(defaultGCPercent)
		log.Debug("garbage collector target set; set GOGC to choose another", zap.Int("gogc", defaultGCPercent))
	})
}
