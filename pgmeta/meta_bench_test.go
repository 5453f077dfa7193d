package pgmeta

import (
	"testing"

	"github.com/caddy-oci/caddy-oci/cache/metastore/metatest"
)

// The same benchmarks as badgermeta's, so the figures compare; the test
// server runs with fsync off, so these are PostgreSQL's upper bound.

func BenchmarkPutManifest(b *testing.B) { metatest.BenchPutManifest(b, openStore(b)) }

func BenchmarkTagGet(b *testing.B) { metatest.BenchTagGet(b, openStore(b)) }
