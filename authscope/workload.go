package authscope

// Workload tokens: OIDC ID tokens that a CI system issues to its jobs
// (a forge's job token), accepted as bearer tokens or as the password of
// Basic auth. go-oidc verifies signature (the issuer's JWKS), issuer,
// audience and expiry; claims map to a user and groups, both under
// WorkloadPrefix, that the access policy then judges like any other
// identity's.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
)

// DefaultWorkloadUsernameClaim is the user name of a workload: the
// subject, which CI systems fill with the repository and ref.
const DefaultWorkloadUsernameClaim = "sub"

// WorkloadPrefix starts a workload's user name and each of its groups
// (`workload:repo:org/app:ref:refs/heads/main`, `workload:org`). The
// values of a CI system's claims are chosen by whoever runs jobs there
// (an owner's name is any account's; a forge-wide issuer such as GitHub
// Actions serves every repository on it), so without the prefix a job
// could take the name of a person, of a config group or of an identity
// provider's group such as admins. Sign-ins refuse names with it.
const WorkloadPrefix = "workload:"

// WorkloadVerifier accepts ID tokens of one issuer for one audience.
type WorkloadVerifier struct {
	Issuer   string
	Audience string
	// Claims map to user and groups; Username defaults to sub here.
	Claims ClaimMapping
	// HTTPClient fetches discovery and keys; nil is a client with
	// outbound's bounds.
	HTTPClient *http.Client
	// Now is the clock of expiry; nil is time.Now.
	Now func() time.Time

	provider lazyProvider
	once     sync.Once
	verifier *oidc.IDTokenVerifier
}

// ErrWorkloadToken is a refused workload token.
var ErrWorkloadToken = errors.New("invalid workload token")

// Mine reports whether raw looks like a JWT from this verifier's issuer.
// It reads the claims unverified, only to choose the verifier; Verify
// decides.
func (v *WorkloadVerifier) Mine(raw string) bool {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 || len(parts[1]) > 16<<10 {
		return false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return false
	}
	var c struct {
		Iss string `json:"iss"`
	}
	return json.Unmarshal(payload, &c) == nil && c.Iss == v.Issuer
}

func (v *WorkloadVerifier) ctx(ctx context.Context) context.Context {
	return withClient(ctx, v.HTTPClient)
}

// idVerifier discovers the issuer on first use; a failure is retried
// later.
func (v *WorkloadVerifier) idVerifier(ctx context.Context) (*oidc.IDTokenVerifier, error) {
	p, err := v.provider.get(ctx, v.Issuer, v.HTTPClient, v.Now)
	if err != nil {
		// The issuer is down or answers garbage: the token may be
		// fine, so a 503 the client retries, not a 401 or a 500.
		return nil, providerDown(ctx, err)
	}
	v.once.Do(func() { v.verifier = p.verifier(&oidc.Config{ClientID: v.Audience, Now: v.Now}) })
	return v.verifier, nil
}

// Verify returns the identity of a workload token.
func (v *WorkloadVerifier) Verify(ctx context.Context, raw string) (Identity, error) {
	ver, err := v.idVerifier(ctx)
	if err != nil {
		return Identity{}, err
	}
	vctx, kf := withKeyFailure(v.ctx(ctx))
	idt, err := ver.Verify(vctx, raw)
	if err != nil && kf.err != nil {
		return Identity{}, kf.err // no keys to check it with: not the token's fault
	}
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %w", ErrWorkloadToken, err)
	}
	var claims map[string]any
	if err := idt.Claims(&claims); err != nil {
		return Identity{}, fmt.Errorf("%w: %w", ErrWorkloadToken, err)
	}
	m := v.Claims
	if m.Username == "" {
		m.Username = DefaultWorkloadUsernameClaim
	}
	user, groups, err := m.identity(claims)
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %w", ErrWorkloadToken, err)
	}
	for i := range groups {
		groups[i] = WorkloadPrefix + groups[i]
	}
	return Identity{User: WorkloadPrefix + user, Groups: groups, Method: MethodWorkload}, nil
}
