package pgmeta

import (
	"testing"

	"github.com/caddy-oci/caddy-oci/cache/metastore"
	"github.com/caddy-oci/caddy-oci/cache/metastore/metatest"
)

func TestMetaContract(t *testing.T) {
	metatest.Run(t, func(t *testing.T) metastore.Store { return openStore(t) })
}
