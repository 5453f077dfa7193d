package s3

import (
	"bytes"
	"context"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
)

// BenchmarkStat: what a Stat costs by the form of the blob, on a local
// versitygw: a plain blob (one HEAD), a linked one with its link cached
// (a HEAD of the blob key, then of the data), a linked one on a replica
// that never saw it (and a GET of the link), and an absent one (a HEAD
// and a GET of the link).
func BenchmarkStat(b *testing.B) {
	srv := s3test.Start(b)
	bucket := srv.Bucket(b)
	newStore := func() *Store {
		s, err := New(context.Background(), Config{
			Bucket: bucket, Endpoint: srv.Endpoint, Region: srv.Region, Prefix: "reg/",
			AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true, PartSize: minPartSize,
		}, nil)
		if err != nil {
			b.Fatal(err)
		}
		return s
	}
	s := newStore()
	ctx := context.Background()
	c := randomBytes(minPartSize + 10)
	plain := blobstore.FromBytes(blobstore.SHA256, c[1:])
	if _, err := s.Put(ctx, plain, -1, bytes.NewReader(c[1:])); err != nil {
		b.Fatal(err)
	}
	linked := blobstore.FromBytes(blobstore.SHA256, c)
	sess, err := s.NewSession(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := sess.Append(ctx, 0, bytes.NewReader(c)); err != nil {
		b.Fatal(err)
	}
	if _, err := sess.Commit(ctx, linked, -1); err != nil {
		b.Fatal(err)
	}
	absent := blobstore.FromBytes(blobstore.SHA256, []byte("absent"))
	cases := []struct {
		name  string
		d     blobstore.Digest
		fresh bool
		want  error
	}{
		{"plain", plain, false, nil},
		{"linked-cached", linked, false, nil},
		{"linked-uncached", linked, true, nil},
		{"absent", absent, false, blobstore.ErrNotFound},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				if tc.fresh {
					s.links.drop(tc.d)
				}
				if _, err := s.Stat(ctx, tc.d); (err == nil) != (tc.want == nil) {
					b.Fatal(err)
				}
			}
		})
	}
}
