package registry

import (
	"context"
	"encoding/json"
	"errors"
	"io"
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

// referrerPage is how many referrers are read from the store at once. A
// referrer's record holds its manifest's annotations, which may be as
// large as the manifest (megabytes): the list of one subject is read and
// sent a page at a time, so what a request holds does not grow with it.
const referrerPage = 8

// eachReferrer calls fn with the manifests in repo whose subject is d, in
// digest order, a store page at a time, until fn returns false or an
// error. An unknown repository has none.
func eachReferrer(ctx context.Context, store Store, repo string, d cache.Digest, fn func(cache.Manifest) (bool, error)) error {
	after := ""
	for {
		list, more, err := store.Referrers(ctx, repo, d, after, referrerPage)
		if errors.Is(err, cache.ErrRepoUnknown) {
			return nil
		}
		if err != nil {
			return err
		}
		for _, m := range list {
			if ok, err := fn(m); err != nil || !ok {
				return err
			}
		}
		if !more || len(list) == 0 {
			return nil
		}
		after = list[len(list)-1].Digest.String()
	}
}

// referrers serves GET /v2/<name>/referrers/<digest> (GET only): an image index of
// the manifests whose subject is the digest, optionally filtered by
// artifactType. An unknown subject (or repository) is an empty index.
// A list longer than one store page is streamed (one descriptor at a
// time, without Content-Length); a store failure after the first bytes
// breaks the transfer rather than end a short index.
func (h *Handler) referrers(w http.ResponseWriter, r *http.Request, rc *request) error {
	d, err := parseDigestArg(rc.arg)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	filter, filtered := q.Get("artifactType"), q.Has("artifactType")
	if filtered {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	ctx := r.Context()
	var first []referrerDescriptor // held until it is known whether more follow
	var enc *json.Encoder          // set once streaming has begun
	send := func(m cache.Manifest) (bool, error) {
		if filtered && m.ArtifactType != filter {
			return true, nil
		}
		desc := referrerDescriptor{
			MediaType:    m.MediaType,
			Digest:       m.Digest.String(),
			Size:         m.Size,
			ArtifactType: m.ArtifactType,
			Annotations:  m.Annotations,
		}
		if enc == nil && len(first) < referrerPage {
			first = append(first, desc)
			return true, nil
		}
		if enc == nil {
			w.Header().Set("Content-Type", MediaTypeOCIIndex)
			w.WriteHeader(http.StatusOK)
			if _, err := io.WriteString(w, `{"schemaVersion":2,"mediaType":"`+MediaTypeOCIIndex+`","manifests":[`); err != nil {
				return false, nil // the client left
			}
			enc = json.NewEncoder(w)
			for i, f := range first {
				if err := writeReferrer(w, enc, f, i == 0); err != nil {
					return false, nil
				}
			}
			first = nil
		}
		if err := writeReferrer(w, enc, desc, false); err != nil {
			return false, nil
		}
		return true, nil
	}
	err = eachReferrer(ctx, h.cfg.Store, rc.name, d, send)
	if enc == nil {
		if err != nil {
			return errInternal(err)
		}
		if first == nil {
			first = []referrerDescriptor{}
		}
		return writeJSON(w, r, MediaTypeOCIIndex, referrerIndex{SchemaVersion: 2, MediaType: MediaTypeOCIIndex, Manifests: first})
	}
	if err != nil {
		panic(http.ErrAbortHandler) // headers and a part are out
	}
	_, _ = io.WriteString(w, "]}")
	return nil
}

// writeReferrer writes one descriptor of a streamed index, after a comma
// unless it is the first.
func writeReferrer(w io.Writer, enc *json.Encoder, d referrerDescriptor, isFirst bool) error {
	if !isFirst {
		if _, err := io.WriteString(w, ","); err != nil {
			return err
		}
	}
	return enc.Encode(d) // its newline is JSON whitespace
}
