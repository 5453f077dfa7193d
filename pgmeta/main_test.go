package pgmeta

import (
	"os"
	"testing"

	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
