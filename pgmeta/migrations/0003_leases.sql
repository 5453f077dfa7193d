-- Leases (package coord): who fills a digest, who runs GC. A row is held
-- by whoever knows its token until expires, on this server's clock, so
-- replicas with skewed clocks still agree on who holds what.

CREATE TABLE leases (
	key     text PRIMARY KEY,
	token   bytea NOT NULL,
	expires timestamptz NOT NULL
);
