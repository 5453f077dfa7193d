-- A size limit on mirrored content, counted for every replica (package
-- cache/composite, evict.go): when each blob was last read, and the bytes
-- of mirrored content. Reads are written in batches, once a minute per
-- replica, never one row per GET.

-- Last read; NULL until the first. The last use is greatest(touched, used).
ALTER TABLE blobs ADD COLUMN used timestamptz;

-- One row: the bytes of mirrored content, added to by each fill's commit
-- and set again by each eviction pass's count.
CREATE TABLE mirror_cache (
	id    boolean PRIMARY KEY DEFAULT true CHECK (id),
	bytes bigint NOT NULL CHECK (bytes >= 0)
);
INSERT INTO mirror_cache (bytes) VALUES (0);
