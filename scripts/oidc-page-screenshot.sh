#!/bin/sh
# Screenshot of the sign-in and API key page (/_oci/auth/) in headless
# Chromium, as issue 6 asks: builds the caddy binary, starts it with OIDC
# sign-in at an in-test provider on loopback, signs "alice" (groups
# artifact-workloads, admins) in, makes two keys, uses one, and has
# Chromium sign in and render the page.
#
#   apt install chromium      # Debian's package; the test skips without it
#   scripts/oidc-page-screenshot.sh [out-dir]   # default: ./screenshots
#
# Writes <out-dir>/oidc-keys-page.png. The same test also checks the
# page's DOM in Chromium (user, groups, key labels and IDs).
set -eu
cd "$(dirname "$0")/.."
out=${1:-screenshots}
mkdir -p "$out"
out=$(cd "$out" && pwd)
command -v chromium >/dev/null || { echo "chromium is not installed (apt install chromium)" >&2; exit 1; }
OCI_SCREENSHOT_DIR="$out" go test ./e2e -count=1 -run '^TestOIDCPageScreenshot$' -v
echo "screenshot: $out/oidc-keys-page.png"
