package registry

// Operation names passed to Observer.ObserveRequest and logged with every
// error. They are fixed strings, safe as metrics labels.
const (
	OpPing           = "ping"
	OpCatalog        = "catalog"
	OpTagsList       = "tags_list"
	OpManifestGet    = "manifest_get"
	OpManifestHead   = "manifest_head"
	OpManifestPut    = "manifest_put"
	OpManifestDelete = "manifest_delete"
	OpBlobGet        = "blob_get"
	OpBlobHead       = "blob_head"
	OpBlobDelete     = "blob_delete"
	// OpUploadStart is a POST that opens an upload session.
	OpUploadStart = "upload_start"
	// OpUploadMonolithic is a POST ?digest= carrying the whole blob.
	OpUploadMonolithic = "upload_monolithic"
	// OpBlobMount is a POST ?mount= that linked an existing blob.
	OpBlobMount    = "blob_mount"
	OpUploadChunk  = "upload_chunk"
	OpUploadStatus = "upload_status"
	OpUploadFinish = "upload_finish"
	OpUploadCancel = "upload_cancel"
	OpReferrers    = "referrers"
	// OpUnsupported is a known path with a method it does not serve.
	OpUnsupported = "unsupported"
	// OpNotFound is a path the API does not have.
	OpNotFound = "not_found"
)
