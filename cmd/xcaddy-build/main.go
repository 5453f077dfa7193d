// Command xcaddy-build is the caddy binary that
// `xcaddy build --with github.com/caddy-oci/caddy-oci` produces: Caddy's
// standard modules plus this project's.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	// plug in Caddy modules here
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-oci/caddy-oci"
)

func main() {
	caddycmd.Main()
}
