package coord_test

import (
	"testing"

	"github.com/caddy-oci/caddy-oci/cache/coord"
	"github.com/caddy-oci/caddy-oci/cache/coord/coordtest"
)

func TestLocal(t *testing.T) {
	coordtest.Run(t, func(*testing.T) func() coord.Leases {
		ls := coord.NewLocal()
		return func() coord.Leases { return ls }
	})
}
