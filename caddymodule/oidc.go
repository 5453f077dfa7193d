package caddymodule

// Config of sign-in with OIDC, API keys and workload tokens (the oidc,
// api_keys and workload parts of an auth block), and its provisioning
// into authscope. API keys and the session key live in the handler's
// store, which opens after provisioning; they reach it through
// storeKeys, which opens it on first use.

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/internal/configfile"
)

// OIDC signs users in at an OpenID Connect provider (authentik,
// Keycloak, Dex, Google, ...) at /_oci/auth/, where they see who they
// are and make API keys. Register the redirect URI
// `<external_url>/_oci/auth/callback` at the provider.
type OIDC struct {
	// Issuer is the provider's issuer URL; its
	// /.well-known/openid-configuration is read on the first sign-in, not
	// at start-up, so a provider that is down does not stop Caddy.
	Issuer string `json:"issuer"`

	// ClientID is this registry's client ID at the provider. ID tokens
	// must name it in their audience.
	ClientID string `json:"client_id"`

	// ClientSecret is the client's secret. Placeholders such as
	// {env.OIDC_CLIENT_SECRET} are replaced. Prefer ClientSecretFile.
	ClientSecret string `json:"client_secret,omitempty"`

	// ClientSecretFile is a file holding the client's secret (surrounding
	// white space is ignored).
	ClientSecretFile string `json:"client_secret_file,omitempty"`

	// Scopes are requested besides openid. Default: profile, email,
	// groups.
	Scopes []string `json:"scopes,omitempty"`

	// ExternalURL is how browsers reach this registry, scheme and host
	// only (https://registry.example). Session cookies are Secure; only
	// an http URL on a loopback host (http://127.0.0.1:5000, a
	// developer's machine) gets cookies without Secure, and http on any
	// other host is refused.
	ExternalURL string `json:"external_url"`

	// UsernameClaim is the ID token claim that names the user. Pick one
	// the provider guarantees unique and users cannot change: policies
	// and the config's groups match users by this name. With email, a
	// token whose email_verified is not true is refused. Default:
	// preferred_username, or sub when that is missing.
	UsernameClaim string `json:"username_claim,omitempty"`

	// GroupsClaim is the claim listing the user's groups, which access
	// policies match like the config's groups. Default: groups.
	GroupsClaim string `json:"groups_claim,omitempty"`

	// SessionKey seals session cookies (AES-256-GCM): 32 bytes as 64 hex
	// digits or base64 (`openssl rand -hex 32`). Placeholders are
	// replaced. Without it and SessionKeyFile, a random key is made once
	// and kept in the storage folder, so sessions survive restarts.
	SessionKey string `json:"session_key,omitempty"`

	// SessionKeyFile is a file holding the session key, as SessionKey.
	SessionKeyFile string `json:"session_key_file,omitempty"`

	// SessionTTL is how long a sign-in lasts. Default: 12h.
	SessionTTL caddy.Duration `json:"session_ttl,omitempty"`
}

// APIKeysConfig sets the lifetimes of API keys, which signed-in users make
// at /_oci/auth/ and use as the password of Basic auth (any user name).
// Keys are on whenever OIDC is.
type APIKeysConfig struct {
	// DefaultTTL is a new key's lifetime when the user names none.
	// Default: 90 days (2160h), or MaxTTL if shorter.
	DefaultTTL caddy.Duration `json:"default_ttl,omitempty"`

	// MaxTTL is the longest lifetime a user may give a key. Default: 365
	// days (8760h).
	MaxTTL caddy.Duration `json:"max_ttl,omitempty"`

	// GroupsMaxAge is how long after its owner's last sign-in a key's
	// groups (from the provider's groups claim, refreshed at every
	// sign-in) count; past it the key has only the rights its owner has
	// by name, until the owner signs in again. Default: 7 days (168h).
	GroupsMaxAge caddy.Duration `json:"groups_max_age,omitempty"`

	// GroupsFrom says where a key's groups come from: "sign_in" (the
	// default), the provider's groups claim at the owner's last sign-in;
	// or "ldap", the groups the ldap directory holds for the owner now
	// (looked up with its service account, remembered for its
	// cache_ttl), for a provider that takes its groups from that
	// directory. With "ldap" a key whose owner the directory no longer
	// holds is refused.
	GroupsFrom string `json:"groups_from,omitempty"`
}

// Where API keys' groups come from (APIKeysConfig.GroupsFrom).
const (
	keyGroupsFromSignIn = "sign_in"
	keyGroupsFromLDAP   = "ldap"
)

// Workload accepts OIDC ID tokens that a CI system issues to its jobs
// (GitHub Actions, Forgejo, GitLab id_tokens), as bearer tokens or as the
// password of Basic auth.
type Workload struct {
	// Issuer is the CI system's issuer URL; its discovery document and
	// keys are fetched on first use.
	Issuer string `json:"issuer"`

	// Audience must be in each token's aud: the audience the jobs ask
	// their tokens for.
	Audience string `json:"audience"`

	// UsernameClaim names the workload: its user name is `workload:`
	// and the claim's value. Default: sub (user
	// workload:repo:org/app:ref:refs/heads/main).
	UsernameClaim string `json:"username_claim,omitempty"`

	// GroupsClaim is a claim (a string or a list of strings) whose values,
	// each after `workload:`, become the workload's groups: with
	// repository_owner, a job of the org blumeops is in the group
	// workload:blumeops. The prefix keeps the names that anyone running
	// jobs at the CI system can choose apart from people's and the
	// identity provider's groups (sign-ins may not use it). Default:
	// groups.
	GroupsClaim string `json:"groups_claim,omitempty"`
}

func (o *OIDC) validate() error {
	if o.Issuer == "" || o.ClientID == "" || o.ExternalURL == "" {
		return errors.New("oidc needs issuer, client_id and external_url")
	}
	if o.ClientSecret != "" && o.ClientSecretFile != "" {
		return errors.New("oidc: client_secret and client_secret_file are exclusive")
	}
	if o.SessionKey != "" && o.SessionKeyFile != "" {
		return errors.New("oidc: session_key and session_key_file are exclusive")
	}
	if o.SessionTTL < 0 {
		return errors.New("oidc: session_ttl must not be negative")
	}
	if err := authscope.CheckServiceURL(o.Issuer); err != nil {
		return fmt.Errorf("oidc issuer: %w", err)
	}
	if _, _, err := authscope.CheckExternalURL(o.ExternalURL); err != nil {
		return fmt.Errorf("oidc: %w", err)
	}
	return nil
}

func (k *APIKeysConfig) validate() error {
	if k.GroupsFrom != "" && k.GroupsFrom != keyGroupsFromSignIn && k.GroupsFrom != keyGroupsFromLDAP {
		return fmt.Errorf("api_keys: groups_from %q: want %s or %s", k.GroupsFrom, keyGroupsFromSignIn, keyGroupsFromLDAP)
	}
	if k.DefaultTTL < 0 || k.MaxTTL < 0 || k.GroupsMaxAge < 0 {
		return errors.New("api_keys: lifetimes and groups_max_age must not be negative")
	}
	if k.MaxTTL > 0 && k.DefaultTTL > k.MaxTTL {
		return errors.New("api_keys: default_ttl is longer than max_ttl")
	}
	return nil
}

func (w *Workload) validate() error {
	if w.Issuer == "" || w.Audience == "" {
		return errors.New("workload needs issuer and audience")
	}
	if err := authscope.CheckServiceURL(w.Issuer); err != nil {
		return fmt.Errorf("workload issuer: %w", err)
	}
	return nil
}

// signInParts are what OIDC and API keys add to the Authorizer and the
// handler.
type signInParts struct {
	signIn  *authscope.SignIn
	apiKeys *authscope.APIKeys
}

// provisionSignIn builds sign-in and API keys; store opens the handler's
// store on first use.
// guesses (login_limit; nil: none) bounds the sign-ins a client address
// may fail at the provider.
func (a *Auth) provisionSignIn(store func() (authRecords, error), guesses *authscope.Guesses, logger *zap.Logger) (*signInParts, error) {
	o := a.OIDC
	repl := caddy.NewReplacer()
	secret := repl.ReplaceAll(o.ClientSecret, "")
	if o.ClientSecretFile != "" {
		b, err := configfile.Read(o.ClientSecretFile)
		if err != nil {
			return nil, fmt.Errorf("oidc client_secret_file: %w", err)
		}
		secret = strings.TrimSpace(string(b))
	}
	sealer := &authscope.Sealer{Key: func() ([]byte, error) {
		st, err := store()
		if err != nil {
			return nil, err
		}
		return st.AuthSecret("session", authscope.SessionKeySize)
	}}
	keyText := repl.ReplaceAll(o.SessionKey, "")
	if o.SessionKeyFile != "" {
		b, err := configfile.Read(o.SessionKeyFile)
		if err != nil {
			return nil, fmt.Errorf("oidc session_key_file: %w", err)
		}
		keyText = string(b)
	}
	if keyText != "" {
		key, err := parseSessionKey(keyText)
		if err != nil {
			return nil, fmt.Errorf("oidc session key: %w", err)
		}
		sealer.Key = func() ([]byte, error) { return key, nil }
	}
	p := &signInParts{apiKeys: &authscope.APIKeys{Store: storeKeys(store)}}
	if c := a.APIKeys; c != nil {
		p.apiKeys.DefaultTTL, p.apiKeys.MaxTTL = time.Duration(c.DefaultTTL), time.Duration(c.MaxTTL)
		p.apiKeys.GroupsMaxAge = time.Duration(c.GroupsMaxAge)
		p.apiKeys.GroupsFromDirectory = c.GroupsFrom == keyGroupsFromLDAP
	}
	now := a.clock
	if now == nil {
		now = time.Now
	}
	p.apiKeys.Now = now
	var err error
	p.signIn, err = authscope.NewSignIn(authscope.SignInOptions{
		OIDC: &authscope.OIDCClient{
			Issuer: o.Issuer, ClientID: o.ClientID, ClientSecret: secret, Scopes: o.Scopes,
			RedirectURL: authscope.RedirectURL(o.ExternalURL),
			Claims:      authscope.ClaimMapping{Username: o.UsernameClaim, Groups: o.GroupsClaim},
		},
		ExternalURL: o.ExternalURL,
		Sealer:      sealer,
		Sessions:    storeSessions(store),
		SessionTTL:  time.Duration(o.SessionTTL),
		APIKeys:     p.apiKeys,
		Guesses:     guesses,
		ClientIP:    clientIP,
		Now:         now,
		Logger:      logger.Named("signin"),
	})
	if err != nil {
		return nil, fmt.Errorf("oidc: %w", err)
	}
	return p, nil
}

// parseSessionKey reads 32 bytes written as hex or base64.
func parseSessionKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if b, err := hex.DecodeString(s); err == nil && len(b) == authscope.SessionKeySize {
		return b, nil
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil && len(b) == authscope.SessionKeySize {
			return b, nil
		}
	}
	return nil, fmt.Errorf("want %d bytes as hex or base64 (openssl rand -hex 32)", authscope.SessionKeySize)
}

// storeKeys is the handler's store as an authscope.APIKeyStore.
type storeKeys func() (authRecords, error)

func (f storeKeys) CreateAPIKey(id string, rec []byte) error {
	st, err := f()
	if err != nil {
		return err
	}
	return st.CreateAPIKey(id, rec)
}

func (f storeKeys) APIKey(id string) ([]byte, error) {
	st, err := f()
	if err != nil {
		return nil, err
	}
	rec, err := st.APIKey(id)
	if errors.Is(err, cache.ErrAPIKeyUnknown) {
		return nil, fmt.Errorf("%w: %w", authscope.ErrAPIKeyNotFound, err)
	}
	return rec, err
}

func (f storeKeys) UpdateAPIKey(id string, fn func([]byte) ([]byte, error)) error {
	st, err := f()
	if err != nil {
		return err
	}
	err = st.UpdateAPIKey(id, fn)
	if errors.Is(err, cache.ErrAPIKeyUnknown) {
		return fmt.Errorf("%w: %w", authscope.ErrAPIKeyNotFound, err)
	}
	return err
}

func (f storeKeys) DeleteAPIKey(id string) error {
	st, err := f()
	if err != nil {
		return err
	}
	return st.DeleteAPIKey(id)
}

func (f storeKeys) APIKeys() ([][]byte, error) {
	st, err := f()
	if err != nil {
		return nil, err
	}
	return st.APIKeys()
}

// storeSessions is the handler's store as an authscope.SessionStore.
type storeSessions func() (authRecords, error)

func (f storeSessions) CreateSession(id string, rec []byte, expires time.Time) error {
	st, err := f()
	if err != nil {
		return err
	}
	return st.CreateSession(id, rec, expires)
}

func (f storeSessions) Session(id string) ([]byte, error) {
	st, err := f()
	if err != nil {
		return nil, err
	}
	rec, err := st.Session(id)
	if errors.Is(err, cache.ErrSessionUnknown) {
		return nil, fmt.Errorf("%w: %w", authscope.ErrSessionNotFound, err)
	}
	return rec, err
}

func (f storeSessions) DeleteSession(id string) error {
	st, err := f()
	if err != nil {
		return err
	}
	return st.DeleteSession(id)
}

// unmarshalOIDC parses
//
//	oidc {
//		issuer             <url>
//		client_id          <id>
//		client_secret      <secret>
//		client_secret_file <file>
//		scopes             <scope>...
//		external_url       <url>
//		username_claim     <claim>
//		groups_claim       <claim>
//		session_key        <hex or base64>
//		session_key_file   <file>
//		session_ttl        <duration>
//	}
func unmarshalOIDC(d *caddyfile.Dispenser) (*OIDC, error) {
	o := &OIDC{}
	err := eachSubdirective(d, func(sub string, args []string) error {
		if sub == "scopes" {
			if len(args) == 0 {
				return d.Err("scopes needs at least one scope")
			}
			o.Scopes = append(o.Scopes, args...)
			return nil
		}
		v, err := oneArg(d, sub, args)
		if err != nil {
			return err
		}
		switch sub {
		case "issuer":
			o.Issuer = v
		case "client_id":
			o.ClientID = v
		case "client_secret":
			o.ClientSecret = v
		case "client_secret_file":
			o.ClientSecretFile = v
		case "external_url":
			o.ExternalURL = v
		case "username_claim":
			o.UsernameClaim = v
		case "groups_claim":
			o.GroupsClaim = v
		case "session_key":
			o.SessionKey = v
		case "session_key_file":
			o.SessionKeyFile = v
		case "session_ttl":
			o.SessionTTL, err = durationArg(d, sub, v)
		default:
			return d.Errf("unrecognized oidc subdirective %q (known: issuer, client_id, client_secret, client_secret_file, scopes, external_url, username_claim, groups_claim, session_key, session_key_file, session_ttl)", sub)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return o, nil
}

// unmarshalAPIKeys parses
//
//	api_keys {
//		default_ttl <duration>
//		max_ttl     <duration>
//		groups_max_age <duration>
//		groups_from    sign_in|ldap
//	}
func unmarshalAPIKeys(d *caddyfile.Dispenser) (*APIKeysConfig, error) {
	k := &APIKeysConfig{}
	err := eachSubdirective(d, func(sub string, args []string) error {
		v, err := oneArg(d, sub, args)
		if err != nil {
			return err
		}
		if sub == "groups_from" {
			k.GroupsFrom = v
			return nil
		}
		dur, err := durationArg(d, sub, v)
		if err != nil {
			return err
		}
		switch sub {
		case "default_ttl":
			k.DefaultTTL = dur
		case "max_ttl":
			k.MaxTTL = dur
		case "groups_max_age":
			k.GroupsMaxAge = dur
		default:
			return d.Errf("unrecognized api_keys subdirective %q (known: default_ttl, max_ttl, groups_max_age, groups_from)", sub)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return k, nil
}

// unmarshalWorkload parses
//
//	workload {
//		issuer         <url>
//		audience       <aud>
//		username_claim <claim>
//		groups_claim   <claim>
//	}
func unmarshalWorkload(d *caddyfile.Dispenser) (*Workload, error) {
	w := &Workload{}
	err := eachSubdirective(d, func(sub string, args []string) error {
		v, err := oneArg(d, sub, args)
		if err != nil {
			return err
		}
		switch sub {
		case "issuer":
			w.Issuer = v
		case "audience":
			w.Audience = v
		case "username_claim":
			w.UsernameClaim = v
		case "groups_claim":
			w.GroupsClaim = v
		default:
			return d.Errf("unrecognized workload subdirective %q (known: issuer, audience, username_claim, groups_claim)", sub)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return w, nil
}

// authRecords is where API keys, sign-in sessions and the session key
// live: the embedded store (cache.Store) on one node, PostgreSQL
// (pgmeta.Store) when replicas share them.
type authRecords interface {
	CreateAPIKey(id string, record []byte) error
	APIKey(id string) ([]byte, error)
	UpdateAPIKey(id string, fn func(record []byte) ([]byte, error)) error
	DeleteAPIKey(id string) error
	APIKeys() ([][]byte, error)
	CreateSession(id string, record []byte, expires time.Time) error
	Session(id string) ([]byte, error)
	DeleteSession(id string) error
	AuthSecret(name string, size int) ([]byte, error)
}
