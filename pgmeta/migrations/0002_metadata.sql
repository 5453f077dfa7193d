-- The registry's metadata (package cache/metastore): repositories, blob
-- records, blob links, manifests with their bytes and references, tags,
-- upload sessions. Names and digests sort by byte ("C"), as badger's keys
-- do, so paging is the same on every backend and every server locale.
-- Every query on a request path is a primary-key or index lookup; the
-- indexes below say which query each serves.

CREATE TABLE repositories (
	name    text COLLATE "C" PRIMARY KEY,
	created timestamptz NOT NULL
);

-- A blob whose bytes the blob store holds. deleting is set by GC before
-- it removes the bytes; the row goes once they are gone.
CREATE TABLE blobs (
	digest   text COLLATE "C" PRIMARY KEY,
	size     bigint NOT NULL CHECK (size >= 0),
	created  timestamptz NOT NULL,
	touched  timestamptz NOT NULL,
	deleting timestamptz
);

-- GC's sweep resumes the blobs it marked.
CREATE INDEX blobs_deleting ON blobs (digest) WHERE deleting IS NOT NULL;

CREATE TABLE blob_links (
	repo   text COLLATE "C" NOT NULL REFERENCES repositories (name),
	digest text COLLATE "C" NOT NULL REFERENCES blobs (digest),
	linked timestamptz NOT NULL,
	PRIMARY KEY (repo, digest)
);

-- Mounts without `from` (ReposWithBlob) and GC's "does anyone link it".
CREATE INDEX blob_links_digest ON blob_links (digest, repo);

CREATE TABLE manifests (
	repo          text COLLATE "C" NOT NULL REFERENCES repositories (name),
	digest        text COLLATE "C" NOT NULL,
	media_type    text NOT NULL,
	size          bigint NOT NULL,
	body          bytea NOT NULL,
	subject       text COLLATE "C",
	artifact_type text NOT NULL,
	-- JSON made by Go: any bytes, which jsonb (no \u0000) could not hold.
	annotations   bytea,
	PRIMARY KEY (repo, digest)
);

-- The referrers API: a repository's manifests of one subject, by digest.
CREATE INDEX manifests_subject ON manifests (repo, subject, digest) WHERE subject IS NOT NULL;
-- GC's "is this digest held as a manifest anywhere".
CREATE INDEX manifests_digest ON manifests (digest);

-- What each manifest names, so GC keeps the links a repository's
-- manifests reference without reading their bytes.
CREATE TABLE manifest_refs (
	repo     text COLLATE "C" NOT NULL,
	manifest text COLLATE "C" NOT NULL,
	ref      text COLLATE "C" NOT NULL,
	PRIMARY KEY (repo, manifest, ref),
	FOREIGN KEY (repo, manifest) REFERENCES manifests (repo, digest) ON DELETE CASCADE
);

-- GC: is this link referenced by a manifest of its repository.
CREATE INDEX manifest_refs_ref ON manifest_refs (repo, ref);

-- A tag points at a manifest its repository holds: the foreign key makes
-- a tag to a deleted manifest impossible, and deleting a manifest takes
-- its tags (and their fetch times) with it.
CREATE TABLE tags (
	repo    text COLLATE "C" NOT NULL,
	tag     text COLLATE "C" NOT NULL,
	digest  text COLLATE "C" NOT NULL,
	fetched timestamptz,
	PRIMARY KEY (repo, tag),
	FOREIGN KEY (repo, digest) REFERENCES manifests (repo, digest) ON DELETE CASCADE
);

-- The cascade of a manifest delete finds its tags by digest.
CREATE INDEX tags_digest ON tags (repo, digest);

CREATE TABLE uploads (
	id      text COLLATE "C" PRIMARY KEY,
	repo    text COLLATE "C" NOT NULL,
	owner   text COLLATE "C" NOT NULL DEFAULT '',
	state   bytea NOT NULL,
	size    bigint NOT NULL CHECK (size >= 0),
	version bigint NOT NULL,
	started timestamptz NOT NULL,
	updated timestamptz NOT NULL
);

-- The upload limits count per repository and per owner.
CREATE INDEX uploads_repo ON uploads (repo);
CREATE INDEX uploads_owner ON uploads (owner) WHERE owner <> '';
-- Expiry: past the TTL, or idle.
CREATE INDEX uploads_started ON uploads (started);
CREATE INDEX uploads_updated ON uploads (updated);
