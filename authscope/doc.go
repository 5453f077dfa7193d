// Package authscope will hold identity and scope for the registry, with no
// knowledge of storage or HTTP routing:
//
//   - challenges: parsing and formatting WWW-Authenticate (Basic, Bearer);
//   - the scope grammar (type[(class)]:name:action[,action]) and the actions a
//     request needs;
//   - name mapping between what a client typed (library/debian, a mirror
//     prefix, ?ns=) and the internal name used everywhere else;
//   - verification of docker_auth-compatible bearer tokens (RS256/ES256 JWTs,
//     kid thumbprints, x5c chains, JWKS);
//   - the token proxy that translates scopes for an upstream token service;
//   - access policies, htpasswd, OIDC and API keys.
//
// So far it holds the challenge and scope grammars and the name mapping
// (the registry checks names through it); token verification, the token
// proxy and access policies come with the auth issue. Until then the
// registry runs without authentication.
package authscope
