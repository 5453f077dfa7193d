// Package caddyoci is what `xcaddy build --with github.com/caddy-oci/caddy-oci`
// plugs into Caddy: xcaddy imports a plugin's module path as a package, so
// this package brings in the modules (oci_registry, oci_front, the oci app),
// the zot config adapter and the `caddy oci` commands (migrate).
package caddyoci

import (
	_ "github.com/caddy-oci/caddy-oci/caddymodule"
	_ "github.com/caddy-oci/caddy-oci/caddymodule/zotadapter"
	_ "github.com/caddy-oci/caddy-oci/migrate"
)
