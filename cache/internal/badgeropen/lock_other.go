//go:build !unix

package badgeropen

// inUse cannot tell without flock; badger.Open reports a folder in use.
func inUse(string) bool { return false }
