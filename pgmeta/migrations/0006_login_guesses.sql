-- Failed and good logins, shared by the replicas so that login_limit
-- bounds the cluster's guesses, not each replica's. Keys are HMACs (under
-- the auth secret "login-ledger") of what the auth layer counts by: client
-- addresses and user names, never stored in the clear.

-- A key's failures: debt as of at, decaying by rate per second.
CREATE TABLE login_failures (
	key  bytea PRIMARY KEY,
	debt double precision NOT NULL CHECK (debt >= 0),
	rate double precision NOT NULL CHECK (rate > 0),
	at   timestamptz NOT NULL
);

-- When a (user name, client address) pair last logged in well.
CREATE TABLE login_known (
	key bytea PRIMARY KEY,
	at  timestamptz NOT NULL
);

-- Each replica reads the good logins recorded since it last looked.
CREATE INDEX login_known_at ON login_known (at);
