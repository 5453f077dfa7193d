//go:build !linux || !(amd64 || arm64)

package benchclient

// DropCache is a no-op where fadvise is not wired up; the push ratios may
// then carry the page-allocation bias described at LimitPush.
func DropCache(string) error { return nil }
