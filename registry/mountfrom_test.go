package registry

import (
	"net/http"
	"testing"
)

// TestMountFromTypedName: a mount's `from` is a name as the client types
// it, mapped as the request's own name is (a default mirror, ns, a host
// alias). The policy is asked about the mapped source; the mount must be
// made from that same repository, not from a local one spelled like what
// the client typed.
func TestMountFromTypedName(t *testing.T) {
	env := newMirrorEnv(t)
	img := randomImage(t, 2048, 1)
	env.up.pushImage("library/debian", "bookworm", img)
	layer, _ := layerOf(t, img)
	// Pulled through the mirror: docker.io/library/debian holds it.
	env.wantStatus(env.do(http.MethodGet, "/v2/debian/blobs/"+layer, nil), http.StatusOK)
	// A HEAD waits for that fill's commit and link.
	env.wantStatus(env.do(http.MethodHead, "/v2/debian/blobs/"+layer, nil), http.StatusOK)

	for _, from := range []string{"debian", "library/debian", "docker.io/library/debian"} {
		resp := env.do(http.MethodPost, "/v2/team/app/blobs/uploads/?mount="+layer+"&from="+from, nil)
		if resp.StatusCode != http.StatusCreated {
			t.Errorf("mount from %s: %d, want 201 (mounted from docker.io/library/debian)", from, resp.StatusCode)
		}
	}
}
