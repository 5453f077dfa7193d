// Package metastore is the seam between the registry's store and the
// engine its metadata lives in (badger on one node, PostgreSQL for many
// replicas): repositories, blob records, blob links with their times,
// manifests with their bytes, tags, referrers, upload sessions, mirror
// tag times, and the queries garbage collection runs over them. Bytes of
// blobs are the blob store's (package blobstore); auth records are
// authscope's stores; who may run GC or fill a digest is coordination's.
//
// The interfaces are small so each caller takes only what it uses: a pull
// needs Tags and Manifests, a push Blobs, Links and Uploads, GC a
// Collector. Store is the sum a backend implements. Every backend runs the
// same contract tests (package metatest).
//
// Times are the caller's: every method that records a time takes it as an
// argument, so one clock (the store's, which tests move) decides grace
// periods, and replicas agree as far as their clocks do (the grace period
// is an hour; NTP keeps clocks within a second).
//
// Names (repositories, tags, upload IDs, owners) are keys: a backend
// refuses with ErrNameInvalid what CheckName refuses, and stores
// everything else byte for byte. The registry checks the spec's grammar
// first, so a client never reaches that refusal.
package metastore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
)

// Digest is the blob store's digest, so both seams speak of one type.
type Digest = blobstore.Digest

// Errors a backend returns; callers test them with errors.Is.
var (
	// ErrUnavailable: the engine cannot be reached or did not answer in
	// time (PostgreSQL down, hung, or its pool exhausted). Nothing was
	// changed, or the change is unknown; the request may be retried, and
	// the registry answers 503. A backend recovers by itself when the
	// engine is back.
	ErrUnavailable = errors.New("metadata unavailable")
	// ErrNameInvalid: a name CheckName refuses, or a media type that is
	// not text. Nothing was changed.
	ErrNameInvalid = errors.New("invalid name")
	// ErrDigestInvalid: a Digest that does not Validate.
	ErrDigestInvalid = blobstore.ErrDigestInvalid
	// ErrDigestMismatch: manifest bytes that do not hash to the digest
	// given. Nothing was stored.
	ErrDigestMismatch = blobstore.ErrDigestMismatch

	ErrRepoUnknown     = errors.New("repository unknown")
	ErrBlobUnknown     = errors.New("blob unknown")
	ErrManifestUnknown = errors.New("manifest unknown")
	ErrTagUnknown      = errors.New("tag unknown")
	ErrUploadUnknown   = errors.New("upload unknown")

	// ErrTagMoved: a compare-and-swap of a tag found it pointing somewhere
	// other than the caller expected (or present when it expected none).
	// Nothing was changed; the caller reads the tag again.
	ErrTagMoved = errors.New("tag moved")
	// ErrManifestRetyped: CreateManifest found the repository holding the
	// manifest under another media type, which a put would change (the
	// Content-Type every pull of it is answered with). Nothing was
	// changed.
	ErrManifestRetyped = errors.New("manifest held with another media type")
	// ErrUploadMoved: an upload session was advanced (or removed) by
	// someone else since the caller read it: its version or size is not
	// the one given. Nothing was changed.
	ErrUploadMoved = errors.New("upload session moved")
	// ErrUploadExists: a session of that ID exists already.
	ErrUploadExists = errors.New("upload session exists")
	// ErrTooManyUploads: opening a session would pass UploadQuota.
	// Nothing was created.
	ErrTooManyUploads = errors.New("too many open uploads")
	// ErrUploadSpace: opening a session, or reserving bytes for a chunk,
	// would pass UploadQuota.Bytes. Nothing was changed.
	ErrUploadSpace = errors.New("upload space exhausted")
	// ErrUploadShare (an ErrUploadSpace): the same for the sessions of
	// one owner and UploadQuota.OwnerBytes.
	ErrUploadShare = fmt.Errorf("%w: the owner's share is held", ErrUploadSpace)
	// ErrBlobDeleting: GC has marked the blob deleted and is removing (or
	// has removed) its bytes. A caller that just wrote those bytes must
	// write them again once the sweep forgot the record (ForgetBlobs),
	// because the sweep may delete them.
	ErrBlobDeleting = errors.New("blob being deleted")
	// ErrSizeMismatch: a blob recorded again with another size than its
	// record holds. A digest has one size; this is a bug or damage.
	ErrSizeMismatch = errors.New("size mismatch")
	// ErrStorageFull: the engine has no room for the write (PostgreSQL's
	// disk full). Nothing was changed; the registry answers 507, and the
	// same write succeeds once space is freed.
	ErrStorageFull = blobstore.ErrStorageFull
	// ErrDamaged: a manifest's record or bytes in the engine do not read
	// back whole (an embedded database's value log that a crash cut
	// short). Reads of it answer this; a put of the same manifest writes
	// it whole again and a delete removes it.
	ErrDamaged = errors.New("metadata record damaged")
)

// DamageReporter is implemented by a metadata store that can lose a
// record's value (an embedded database's value log cut short): a listing
// leaves such a record out, as a read of it answers ErrDamaged, and
// reports it to fn, so that what lists around it answers and the damage
// still reaches the log. fn is set once, before the store is used.
type DamageReporter interface {
	ReportDamaged(fn func(repo string, d Digest, err error))
}

// Page is one page of a listing in lexical (byte) order.
type Page struct {
	// Names are the names after the `last` asked for, at most n. Never nil.
	Names []string
	// More reports whether names remain after this page.
	More bool
}

// Repositories lists repositories (the catalog).
type Repositories interface {
	// Repositories lists repository names in byte order after last
	// (empty: from the start), at most n (n < 0: all). A repository exists
	// from its first blob link or manifest, and stays.
	//
	// Paging is by key, not by offset: a name present for the whole
	// listing appears exactly once, whatever is added meanwhile, so pages
	// are stable across replicas.
	Repositories(ctx context.Context, last string, n int) (Page, error)
}

// BlobRecord is what the metadata knows of a blob whose bytes are in the
// blob store.
type BlobRecord struct {
	Digest Digest
	Size   int64
	// Created is when the blob was first recorded.
	Created time.Time
	// Touched is when it was last recorded (pushed or filled again); the
	// GC grace period of an unlinked blob counts from it, as today's file
	// time does.
	Touched time.Time
}

// Blobs records which blobs exist, so that nothing lists or stats the
// blob store to find out.
type Blobs interface {
	// RecordBlob records that the blob store holds d, size bytes, as of
	// at. Call it after the bytes are committed. Recording an existing
	// blob again moves Touched to at (never back) and keeps Created;
	// another size is ErrSizeMismatch. ErrBlobDeleting while GC removes
	// it.
	RecordBlob(ctx context.Context, d Digest, size int64, at time.Time) (BlobRecord, error)
	// Blob returns d's record; ErrBlobUnknown if there is none or GC is
	// deleting it.
	Blob(ctx context.Context, d Digest) (BlobRecord, error)
}

// Link is a repository's link to a blob.
type Link struct {
	Repo   string
	Digest Digest
	// Linked is when the link was made, or last renewed (linked again,
	// or asked for: RenewBlobLink). GC leaves a link no manifest
	// references alone for the grace period after it.
	Linked time.Time
}

// Links are repositories' links to blobs. A repository holds a blob only
// through a link, so deleting a blob from one repository never breaks
// another, and dedupe is free.
type Links interface {
	// LinkBlob records that repo holds blob d as of at, creating the
	// repository if new. A link that exists is renewed to at (never moved
	// back). ErrBlobUnknown if d has no record or is being deleted: a link
	// never points at bytes GC is about to remove.
	LinkBlob(ctx context.Context, repo string, d Digest, at time.Time) error
	// BlobLink returns repo's link to d and d's record in one read (a
	// blob HEAD needs both); ErrBlobUnknown if repo does not link d.
	BlobLink(ctx context.Context, repo string, d Digest) (Link, BlobRecord, error)
	// RenewBlobLink moves repo's link to d to at if it is older than
	// olderThan, and reports whether the link exists. Today's HasBlob
	// renews links older than half the grace period this way: a client
	// asks for a blob right before it pushes a manifest that references
	// it, so from then on the link must outlive the grace period as a
	// fresh one would. A link removed meanwhile is not made again (false).
	RenewBlobLink(ctx context.Context, repo string, d Digest, at, olderThan time.Time) (bool, error)
	// UnlinkBlob removes repo's link to d; the blob stays for other
	// repositories and GC. ErrBlobUnknown if repo did not link it.
	UnlinkBlob(ctx context.Context, repo string, d Digest) error
	// ReposWithBlob lists the repositories that link d, in byte order,
	// at most limit of them (limit <= 0: all). A mount without `from`
	// picks one the caller may read.
	ReposWithBlob(ctx context.Context, d Digest, limit int) ([]string, error)
}

// Manifest is a manifest as a repository holds it.
type Manifest struct {
	Digest    Digest
	MediaType string
	// Size is the length of the bytes, set by the store.
	Size int64
	// Subject is the digest in the manifest's `subject` field, if any:
	// the manifest is one of the subject's referrers.
	Subject Digest
	// ArtifactType is what the referrers API reports.
	ArtifactType string
	// Annotations as found in the manifest (for the referrers API),
	// stored exactly, any bytes.
	Annotations map[string]string
	// Refs are the digests the manifest names (config, layers, child
	// manifests, blobs, subject). GC keeps a repository's link to each of
	// them while the repository holds the manifest. Order and repeats do
	// not matter; the store keeps the set.
	Refs []Digest
	// Linked are blobs the caller found linked in the repository before
	// the put (a push's config and layers, checked for
	// MANIFEST_BLOB_UNKNOWN). The put fails with ErrBlobUnknown, changing
	// nothing, if one of them is no longer linked when it commits: GC
	// dropped the link between the check and the put, and would sweep
	// the blob under the manifest. Not stored.
	Linked []Digest
}

// Manifests are the manifests of repositories, with their exact bytes and
// what they reference, and the referrers index over their subjects.
type Manifests interface {
	// PutManifest stores body as manifest m.Digest of repo, creating the
	// repository if new, and points each of tags at it (a tag pointing
	// elsewhere moves: last writer wins), all in one transaction: a
	// reader sees the manifest with all its tags, or the state before.
	// body must hash to m.Digest (ErrDigestMismatch otherwise); m.Size is
	// set from it. Putting a manifest again replaces its record (a new
	// subject moves its referrer entry) and keeps its tags. A tag that
	// moves loses its mirror fetch time; one that stays keeps it.
	PutManifest(ctx context.Context, repo string, m Manifest, body []byte, tags []string) error
	// CreateManifest is PutManifest for a push that may only create: it
	// applies only if each of tags is absent or points at m.Digest
	// already (ErrTagMoved otherwise) and repo does not hold m.Digest
	// under another media type (ErrManifestRetyped otherwise); refused,
	// nothing changes. The check and the write are one transaction, so
	// a tag another replica points meanwhile is never moved: of many
	// concurrent creates of one tag with different manifests, exactly
	// one succeeds. Tags that stay keep their mirror fetch time.
	CreateManifest(ctx context.Context, repo string, m Manifest, body []byte, tags []string) error
	// Manifest returns repo's manifest d without its bytes;
	// ErrManifestUnknown if repo does not hold it.
	Manifest(ctx context.Context, repo string, d Digest) (Manifest, error)
	// ManifestBody is Manifest with the exact bytes.
	ManifestBody(ctx context.Context, repo string, d Digest) (Manifest, []byte, error)
	// DeleteManifest removes manifest d from repo with, in the same
	// transaction, every tag of repo pointing at it (and their mirror
	// fetch times) and its referrer entry. The blob links it referenced
	// stay: GC drops those no other manifest of the repository references
	// once their own times are older than the grace period.
	// ErrManifestUnknown if repo does not hold it.
	DeleteManifest(ctx context.Context, repo string, d Digest) error
	// Referrers lists the manifests of repo whose subject is d, by
	// digest, without their Refs: those after the digest `after` ("": from
	// the first), at most n (n < 0: all), and whether more remain. An
	// unknown subject gives an empty list, not an error. Callers page
	// through a long list: each record may carry megabytes of annotations.
	// A referrer whose record or bytes are damaged is left out, not
	// counted in n (see DamageReporter).
	Referrers(ctx context.Context, repo string, d Digest, after string, n int) ([]Manifest, bool, error)
}

// TagInfo is what the store knows of one tag.
type TagInfo struct {
	Digest Digest
	// Fetched is when a mirror last confirmed the tag upstream; zero for
	// a pushed tag, and after every move.
	Fetched time.Time
}

// Tags are the tags of repositories. A tag always points at a manifest
// its repository holds.
type Tags interface {
	// Tag returns what tag of repo points at; ErrTagUnknown if absent.
	Tag(ctx context.Context, repo, tag string) (TagInfo, error)
	// MoveTag points tag at to if it points at from now (from zero: if
	// the tag does not exist): ErrTagMoved otherwise, nothing changed.
	// Two replicas moving one tag from the same digest at once leave
	// exactly one winner. ErrManifestUnknown if repo does not hold to.
	MoveTag(ctx context.Context, repo, tag string, from, to Digest) error
	// DeleteTag removes one tag and its fetch time; the manifest stays.
	// ErrTagUnknown if absent.
	DeleteTag(ctx context.Context, repo, tag string) error
	// Tags lists repo's tags in byte order with the paging of
	// Repositories. ErrRepoUnknown if the repository does not exist.
	Tags(ctx context.Context, repo, last string, n int) (Page, error)
	// SetTagFetched records that a mirror confirmed tag upstream at at
	// (cache/tagfetch.go). ErrTagUnknown if absent.
	SetTagFetched(ctx context.Context, repo, tag string, at time.Time) error
}

// Upload is a resumable upload session as the metadata keeps it. Its
// bytes are the blob store's; State is the blob store's Session.State,
// opaque here, which any replica hands to ResumeSession to carry on.
type Upload struct {
	ID   string
	Repo string
	// Owner is who opened the session (a user or a client address), for
	// the limit per owner; may be empty (counted against nobody).
	Owner string
	State []byte
	// Size is the bytes appended and accounted for so far.
	Size int64
	// Reserved is the bytes of a chunk being written into the session
	// (ReserveUploadBytes), counted against the byte limits with Size
	// until AdvanceUpload or ReleaseUploadBytes.
	Reserved int64
	// Version counts changes; a change names the version it read
	// (compare-and-swap), so two replicas never both advance a session.
	Version int64
	Started time.Time
	Updated time.Time
}

// UploadQuota bounds the sessions one may open and the bytes they may
// hold (Size plus Reserved). Zero fields are no limit.
type UploadQuota struct {
	PerRepo  int // open sessions of one repository
	PerOwner int // open sessions of one (non-empty) owner
	// Bytes: all open sessions together.
	Bytes int64
	// OwnerBytes: the open sessions of one (non-empty) owner.
	OwnerBytes int64
}

// UploadUsage is what the open sessions of one repository and one owner
// hold, for the upload limits.
type UploadUsage struct {
	RepoSessions  int
	OwnerSessions int
	OwnerBytes    int64
	Bytes         int64
}

// Uploads keeps upload sessions, so that any replica can take the next
// chunk of a session another one started.
type Uploads interface {
	// CreateUpload records a new session u (ID, Repo, Owner, State,
	// Started; Size 0) at Version 1 and Updated = Started, if that keeps
	// the repository's and the owner's open sessions within q: counting
	// and creating are one step, across replicas (ErrTooManyUploads
	// otherwise; ErrUploadSpace or ErrUploadShare when the bytes held
	// already reach q's). ErrUploadExists if the ID is taken.
	CreateUpload(ctx context.Context, u Upload, q UploadQuota) (Upload, error)
	// Upload returns session id, whatever its repository or age (the
	// caller judges both); ErrUploadUnknown if absent.
	Upload(ctx context.Context, id string) (Upload, error)
	// AdvanceUpload stores a chunk's outcome: the blob store's new state
	// and size, as of at. It applies only if the stored session still has
	// the version and size of read, the session as the caller read it
	// (ErrUploadMoved otherwise, and if the session is gone), and returns
	// the session at the next version. A size never shrinks
	// (ErrUploadMoved). The session's reservation ends (its bytes are
	// in size now).
	AdvanceUpload(ctx context.Context, read Upload, state []byte, size int64, at time.Time) (Upload, error)
	// ReserveUploadBytes adds n bytes of a chunk being written to session
	// id's Reserved, if that keeps the bytes of all open sessions and of
	// the session's owner within q's Bytes and OwnerBytes (ErrUploadSpace,
	// ErrUploadShare otherwise, nothing changed): counting and reserving
	// are one step, across replicas. ErrUploadUnknown if absent.
	ReserveUploadBytes(ctx context.Context, id string, n int64, q UploadQuota) error
	// ReleaseUploadBytes ends session id's reservation (its chunk
	// failed). A session that is gone is no error.
	ReleaseUploadBytes(ctx context.Context, id string) error
	// DeleteUpload removes session id (committed, cancelled, expired).
	// ErrUploadUnknown if absent.
	DeleteUpload(ctx context.Context, id string) error
	// UploadUsage counts the open sessions of repo and of owner (owner
	// empty: none), the bytes the owner's hold and those all hold
	// (Size plus Reserved).
	UploadUsage(ctx context.Context, repo, owner string) (UploadUsage, error)
	// ExpiredUploads lists up to n sessions started before startedBefore
	// (past the upload TTL) or last updated before updatedBefore (idle;
	// zero time: no idle limit), in order of (Started, ID), from the
	// first after after's (zero: from the start). GC resumes from the
	// last it saw, so sessions it must leave (written right now, or whose
	// bytes could not be freed) do not come back first in every batch.
	ExpiredUploads(ctx context.Context, startedBefore, updatedBefore time.Time, after Upload, n int) ([]Upload, error)
}

// Collector is what garbage collection asks of the metadata: the same
// grace-period semantics as cache/gc.go, as queries in batches. Each
// listing is a proposal; each removal checks again, in its own
// transaction, that the proposal still holds, so a link made, renewed or
// referenced meanwhile always wins. Which replica collects is
// coordination's (one leader at a time).
type Collector interface {
	// UnreferencedLinks lists, after the link `after` (zero: from the
	// start; by repository, then digest), up to n blob links older than
	// before that no manifest of their repository references (Refs, or
	// the manifest itself).
	UnreferencedLinks(ctx context.Context, before time.Time, after Link, n int) ([]Link, error)
	// DropLinks removes those of links that are still unreferenced and
	// still older than before, and returns them.
	DropLinks(ctx context.Context, links []Link, before time.Time) ([]Link, error)
	// UnlinkedBlobs lists, by digest after `after` (zero: from the start),
	// up to n blob records touched before `before` that no repository
	// links as a blob or holds as a manifest and that are not being
	// deleted.
	UnlinkedBlobs(ctx context.Context, before time.Time, after Digest, n int) ([]BlobRecord, error)
	// MarkBlobsDeleting marks as being deleted those of ds that are still
	// unlinked and touched before `before`, and returns them. From then
	// on the blob is unknown to Blob and LinkBlob, and RecordBlob fails
	// with ErrBlobDeleting, until ForgetBlobs. The caller deletes their
	// bytes, then forgets them.
	MarkBlobsDeleting(ctx context.Context, ds []Digest, before time.Time) ([]BlobRecord, error)
	// DeletingBlobs lists up to n blobs marked as being deleted, by
	// digest after `after`: a sweep that died between marking and
	// forgetting is finished by the next one.
	DeletingBlobs(ctx context.Context, after Digest, n int) ([]BlobRecord, error)
	// ForgetBlobs removes the records of those of ds marked as being
	// deleted (the others stay), once their bytes are gone.
	ForgetBlobs(ctx context.Context, ds []Digest) error
}

// BlobUse is a blob record as a size-limited mirror cache sees it.
type BlobUse struct {
	BlobRecord
	// Used is when the blob was last read (RecordUses) or recorded
	// (Touched), whichever is later.
	Used time.Time
	// Repos are the repositories that link it, in byte order.
	Repos []string
	// Manifest: some repository holds the digest as a manifest.
	Manifest bool
}

// Eviction names a blob a mirror cache wants gone, with what the caller
// saw when it chose it: EvictBlobs removes it only if that still holds.
type Eviction struct {
	Digest Digest
	// Repos are the repositories allowed to link it (the mirrors' among
	// those that did when it was listed); a link from any other keeps it.
	Repos []string
	// Used is the last use the caller saw; a later use keeps it.
	Used time.Time
}

// AllowsLinks reports whether repos, the repositories linking the blob
// now, still allow the eviction: some link it, and all are among e.Repos.
// Both backends decide by it, inside their EvictBlobs transaction.
func (e Eviction) AllowsLinks(repos []string) bool {
	if len(repos) == 0 {
		return false
	}
	for _, r := range repos {
		if !slices.Contains(e.Repos, r) {
			return false
		}
	}
	return true
}

// MirrorCache is what a size limit on mirrored content asks of the
// metadata (cache/composite/evict.go), so that the size and each blob's
// last use are one figure for every replica. Which repositories are
// mirrors' is the caller's to say: the metadata keeps no configuration.
type MirrorCache interface {
	// RecordUses moves the last use of each blob of uses to the time
	// given, never back, in one write for all of them. Blobs without a
	// record are skipped.
	RecordUses(ctx context.Context, uses map[Digest]time.Time) error
	// BlobUses lists blob records not being deleted, by digest after
	// `after` (zero: from the start), up to n, with their last use and
	// the repositories linking them.
	BlobUses(ctx context.Context, after Digest, n int) ([]BlobUse, error)
	// EvictBlobs removes, in one transaction, every link to each blob of
	// es and marks it being deleted (as MarkBlobsDeleting does), if it is
	// still linked, only by repositories of its Repos, held as a manifest
	// by none, and neither used nor touched after its Used. It returns
	// the blobs it marked; the others are left as they are. The caller
	// deletes their bytes, then forgets them (ForgetBlobs).
	EvictBlobs(ctx context.Context, es []Eviction) ([]BlobRecord, error)
	// AddMirrorBytes adds n (which may be negative) to the bytes of
	// mirrored content the store keeps for every replica, and returns
	// the new figure (never below zero). n = 0 reads it.
	AddMirrorBytes(ctx context.Context, n int64) (int64, error)
}

// Store is everything a metadata backend offers. It is safe for
// concurrent use, and for use by many processes at once if the engine is
// shared (PostgreSQL).
type Store interface {
	Repositories
	Blobs
	Links
	Manifests
	Tags
	Uploads
	Collector
	MirrorCache
}

// Clock is a metadata store shared by replicas that can tell its own
// time: the one clock they all read, so that times one replica writes
// and another judges (expiry, grace periods) do not depend on how far
// their own clocks are apart. Optional: a caller checks with a type
// assertion.
type Clock interface {
	// Now is the store's current time.
	Now(ctx context.Context) (time.Time, error)
}
