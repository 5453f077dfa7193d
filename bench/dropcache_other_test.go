//go:build !linux || !(amd64 || arm64)

package bench

// dropCache is a no-op where fadvise is not wired up; the push ratios may
// then carry the page-allocation bias described in bench_test.go.
func dropCache(string) error { return nil }
