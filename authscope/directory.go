package authscope

// Directories hold users and passwords outside the config (LDAP): the
// Authorizer asks one about Basic credentials the htpasswd file does not
// settle. The directory itself lives in its own package (ldapauth), so
// that its client library is linked only where it is used.

import (
	"context"
	"errors"
)

// Directory checks user names and passwords it holds.
type Directory interface {
	// Login returns who user is when password is theirs: the user name
	// as the directory spells it, the groups it lists, and the Method.
	// An error wraps ErrBadCredentials when the directory refused the
	// credentials (no such user, wrong or empty password), and
	// ErrUnavailable when it could not be asked (down, timed out,
	// misconfigured): then the caller is not at fault. It is
	// *ErrTooManyGuesses with Busy set when no turn to ask came in time
	// (Turns): answered 429, the credentials unchecked.
	Login(ctx context.Context, user, password string) (Identity, error)
}

// ErrBadCredentials is credentials a Directory refused: answered 401.
var ErrBadCredentials = errors.New("wrong user name or password")

// ErrUnavailable is an identity source that cannot be asked now: answered
// 503, so that clients retry instead of telling the user to fix a
// password that may be right.
var ErrUnavailable = errors.New("identity source unavailable")

// DirectoryFrom is a Directory whose logins from an address that logged
// in to the account before (GuessAttempt.Known) may take turns of their
// own, which a flood of made-up names from new addresses cannot take, as
// htpasswd's comparisons may (Htpasswd.CheckFrom).
type DirectoryFrom interface {
	LoginFrom(ctx context.Context, user, password string, knownAddress bool) (Identity, error)
}

// DirectoryUsers is a Directory that can say who a user is now without
// their password, with its own service account: the owners of API keys
// take their groups from it when the config says so.
type DirectoryUsers interface {
	// Lookup returns user as the directory holds it now. An error wraps
	// ErrNoSuchUser when the directory has no such user, and
	// ErrUnavailable when it could not be asked; *ErrTooManyGuesses as
	// Login's.
	Lookup(ctx context.Context, user string) (Identity, error)
}

// ErrNoSuchUser is a user a directory does not hold (any more).
var ErrNoSuchUser = errors.New("no such user")
