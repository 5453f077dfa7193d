-- The auth layer's records, opaque to the registry (authscope makes and
-- reads them): API keys, signed-in sessions, and secrets made once.

CREATE TABLE api_keys (
	id     text PRIMARY KEY,
	record bytea NOT NULL
);

CREATE TABLE sessions (
	id      text PRIMARY KEY,
	record  bytea NOT NULL,
	expires timestamptz NOT NULL
);

-- Sign-ins sweep expired sessions by expiry.
CREATE INDEX sessions_expires ON sessions (expires);

CREATE TABLE auth_secrets (
	name   text PRIMARY KEY,
	secret bytea NOT NULL
);
