package registry

import (
	"errors"
	"net/http"

	"github.com/caddy-oci/caddy-oci/cache"
)

type referrerDescriptor struct {
	MediaType    string            `json:"mediaType"`
	Digest       string            `json:"digest"`
	Size         int64             `json:"size"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
}

type referrerIndex struct {
	SchemaVersion int                  `json:"schemaVersion"`
	MediaType     string               `json:"mediaType"`
	Manifests     []referrerDescriptor `json:"manifests"`
}

// referrers serves GET /v2/<name>/referrers/<digest>: an image index of
// the manifests whose subject is the digest, optionally filtered by
// artifactType. An unknown subject (or repository) is an empty index.
func (h *Handler) referrers(w http.ResponseWriter, r *http.Request, rc *request) error {
	d, err := parseDigestArg(rc.arg)
	if err != nil {
		return err
	}
	list, err := h.cfg.Store.Referrers(r.Context(), rc.name, d)
	if err != nil && !errors.Is(err, cache.ErrRepoUnknown) {
		return errInternal(err)
	}
	q := r.URL.Query()
	filter, filtered := q.Get("artifactType"), q.Has("artifactType")
	out := referrerIndex{SchemaVersion: 2, MediaType: MediaTypeOCIIndex, Manifests: []referrerDescriptor{}}
	for _, m := range list {
		if filtered && m.ArtifactType != filter {
			continue
		}
		out.Manifests = append(out.Manifests, referrerDescriptor{
			MediaType:    m.MediaType,
			Digest:       m.Digest.String(),
			Size:         m.Size,
			ArtifactType: m.ArtifactType,
			Annotations:  m.Annotations,
		})
	}
	if filtered {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	return writeJSON(w, r, MediaTypeOCIIndex, out)
}
