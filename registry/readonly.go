package registry

// Read-only mode: the registry serves pulls and refuses every change
// through the API, for maintenance and migrations (copying the storage
// elsewhere) and for a replica that only serves.
//
// The rule is by method, not by operation: only GET and HEAD pass. That
// covers every write the API has (upload start, chunk and finish, mounts,
// manifest PUT, manifest, tag and blob DELETE) and any added later, and
// also the cancel of an upload session (DELETE), which removes files:
// sessions opened before the switch expire on their own.
//
// The refusal comes before auth and before the body is read: whoever the
// caller is, the answer is the same, and it says what to do. Mirror
// fills are not writes through the API: a pull of content not cached yet
// still fetches it upstream and stores it, or a read-only mirror would
// stop serving what it has never seen.

import "net/http"

// errRegistryReadOnly is the answer to any write while read-only. DENIED
// and 403 (not UNSUPPORTED and 405): the operation exists and is
// refused for now, so clients show the message instead of falling back
// to another way to write (405 on a PATCH makes some clients retry with
// a monolithic PUT).
func errRegistryReadOnly() *Error {
	return newError(http.StatusForbidden, CodeDenied,
		"the registry is read-only: pushes and deletes are refused, pulls work", nil)
}

// readsOnly reports whether method cannot change what the API serves.
func readsOnly(method string) bool {
	return method == http.MethodGet || method == http.MethodHead
}
