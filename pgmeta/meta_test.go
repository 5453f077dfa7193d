package pgmeta

import (
	"context"
	"errors"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/metastore"
	"github.com/caddy-oci/caddy-oci/cache/metastore/metatest"
)

func TestMetaContract(t *testing.T) {
	metatest.Run(t, func(t *testing.T) metastore.Store { return openStore(t) })
}

// TestDamagedRecordIsNotUnavailable: a stored value that does not decode
// is an error of its own, never "PostgreSQL is down", which would send
// callers into retries that cannot help.
func TestDamagedRecordIsNotUnavailable(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	body := []byte("{}")
	m := metastore.Manifest{Digest: blobstore.FromBytes(blobstore.SHA256, body), Annotations: map[string]string{"a": "b"}}
	if err := s.PutManifest(ctx, "r", m, body, []string{"t"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, `UPDATE manifests SET annotations = '\xff'`); err != nil {
		t.Fatal(err)
	}
	_, err := s.Manifest(ctx, "r", m.Digest)
	if err == nil || errors.Is(err, metastore.ErrUnavailable) {
		t.Fatalf("Manifest of a damaged record = %v, want an error that is not ErrUnavailable", err)
	}
}
