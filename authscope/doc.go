// Package authscope holds identity and scope for the registry, with no
// knowledge of storage or HTTP routing:
//
//   - challenges: parsing and formatting WWW-Authenticate (Basic, Bearer);
//   - the scope grammar (type[(class)]:name:action[,action]) and the actions a
//     request needs (ActionsFor, Need);
//   - name mapping between what a client typed (library/debian, a mirror
//     prefix, ?ns=) and the internal name used everywhere else (Names);
//   - verification of docker_auth-compatible bearer tokens (TokenVerifier,
//     KeySet: kid as RFC 7638 thumbprint or libtrust fingerprint, x5c
//     chains to a trusted bundle, JWKS);
//   - the token proxy that translates scopes for an upstream token service
//     (TokenProxy, TranslateScopes), with the same Names as requests;
//   - htpasswd (bcrypt) and zot-style access policies (Htpasswd, Policy);
//   - the Directory interface of external user stores, which ldapauth
//     implements for LDAP;
//   - the Authorizer that puts these together for one request and writes
//     the audit log.
package authscope
