-- The bytes of a chunk being written into a session, counted with the
-- sessions' sizes against max_upload_bytes and max_upload_bytes_per_client
-- on every replica; zero again when the chunk lands or fails.
ALTER TABLE uploads ADD COLUMN reserved bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0);
