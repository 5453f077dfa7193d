package registry

// A blob's size is known before its bytes: the manifest that names it
// declares it. A mirror's fill of a blob of undeclared length (a chunked
// answer) was bounded only by max_blob_size and the storage reserve, so
// an upstream that streamed without end filled the disk to the reserve,
// and every push meanwhile answered 507; one that declared a
// Content-Length far above the blob's size wrote that much before the
// digest check failed. The mirror remembers the sizes the manifests it
// served declare, per repository, and a fill writes no more than that.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/caddy-oci/caddy-oci/cache"
)

// errUpstreamBlobSize: upstream's blob is not of the size the manifest
// naming it declares.
var errUpstreamBlobSize = errors.New("upstream blob is not of its declared size")

// maxDeclaredSizes bounds the remembered sizes (about 150 bytes each): past
// it they are forgotten all at once, and a fill of a blob whose manifest
// was not served since asks upstream with a HEAD.
const maxDeclaredSizes = 1 << 16

// declaredSizes maps "repo@digest" of a blob to the size a manifest of
// that repository declares for it, and "repo@digest" of a manifest already
// read to -1. Keyed by repository: a manifest of one repository must not
// decide the size of another's blob (a wrong size would fail its fills).
type declaredSizes struct {
	mu sync.Mutex
	m  map[string]int64
}

// note records the blob sizes manifest d of repo (body) declares: its
// config, layers and blobs. An index declares manifests, not blobs.
func (s *declaredSizes) note(repo string, d cache.Digest, body []byte) {
	key := repo + "@" + d.String()
	s.mu.Lock()
	_, seen := s.m[key]
	s.mu.Unlock()
	if seen {
		return
	}
	var doc manifestDoc
	if json.Unmarshal(body, &doc) != nil {
		return
	}
	descs := doc.Layers
	if doc.Config != nil {
		descs = append(descs[:len(descs):len(descs)], *doc.Config)
	}
	if len(descs)+1 > maxDeclaredSizes {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil || len(s.m)+len(descs)+1 > maxDeclaredSizes {
		s.m = make(map[string]int64)
	}
	s.m[key] = -1
	for _, desc := range descs {
		if desc.Size < 0 {
			continue
		}
		if _, err := cache.ParseDigest(desc.Digest); err == nil {
			s.m[repo+"@"+desc.Digest] = desc.Size
		}
	}
}

// size is the size a manifest of repo declared for blob d, if one did.
func (s *declaredSizes) size(repo string, d cache.Digest) (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.m[repo+"@"+d.String()]
	return n, ok && n >= 0
}

// checkDeclaredSize refuses an upstream answer whose declared length
// (-1: none) is not the blob's expected size (want, -1: unknown).
func checkDeclaredSize(want, contentLength int64) error {
	if want >= 0 && contentLength >= 0 && contentLength != want {
		return fmt.Errorf("%w: Content-Length %d, declared %d", errUpstreamBlobSize, contentLength, want)
	}
	return nil
}

// exactBody ends a body at size bytes: what upstream sends past the
// blob's declared size is never read, so a fill writes no more than that
// (the digest check decides whether those bytes are the blob; a shorter
// body fails the fill's own length check).
type exactBody struct {
	io.ReadCloser
	left int64
}

func (b *exactBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	return n, err
}
