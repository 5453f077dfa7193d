package registry

import (
	"encoding/json"
	"errors"
	"net/http"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache"
)

// FuzzParseRange: any Range header against any size gives ranges inside
// the content (each at least one byte, none past its end), or exactly one
// of the three errors the blob GET answers by (416, 416, or the whole
// content for another unit); never a panic or an overflowing range.
func FuzzParseRange(f *testing.F) {
	for _, seed := range []string{
		"bytes=0-99", "bytes=0-", "bytes=-500", "bytes=0-0,-1", "bytes=5-1", "bytes= 1 - 2 , 3-4",
		"bytes=999999999999999999-", "bytes=-999999999999999999", "items=0-1", "bytes=", "bytes=,", "bytes=--1",
		"bytes=0-9223372036854775807", "bytes=1-2,", "Bytes=0-1",
	} {
		f.Add(seed, int64(1000))
		f.Add(seed, int64(0))
	}
	f.Fuzz(func(t *testing.T, header string, size int64) {
		if size < 0 {
			return // a stored blob's size
		}
		ranges, err := ParseRange(header, size)
		if err != nil {
			if !errors.Is(err, ErrRangeInvalid) && !errors.Is(err, ErrRangeUnsatisfied) && !errors.Is(err, ErrRangeUnit) {
				t.Fatalf("ParseRange(%q, %d): unexpected error %v", header, size, err)
			}
			if ranges != nil {
				t.Fatalf("ParseRange(%q, %d): ranges %v with error %v", header, size, ranges, err)
			}
			return
		}
		if header != "" && len(ranges) == 0 {
			t.Fatalf("ParseRange(%q, %d): no ranges and no error", header, size)
		}
		for _, r := range ranges {
			if r.Start < 0 || r.Length < 1 || r.Start >= size || r.Length > size-r.Start {
				t.Fatalf("ParseRange(%q, %d): range %+v outside the content", header, size, r)
			}
		}
	})
}

// FuzzUpstreamManifest: whatever an upstream answers to a manifest GET
// (body, Content-Type, Docker-Content-Digest, Content-Length), the mirror
// keeps it only as one JSON object of a manifest media type, exactly as
// long as announced, whose digest is the bytes' own and the one asked for;
// and reading its metadata never panics.
func FuzzUpstreamManifest(f *testing.F) {
	body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}`)
	d := cache.FromBytes(cache.SHA256, body).String()
	index := []byte(`{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + d + `","size":1,"platform":{"os":"linux"}}],"subject":{"digest":"` + d + `"}}`)
	for _, ct := range []string{MediaTypeOCIManifest, "application/json", "", MediaTypeOCIIndex, "text/html"} {
		f.Add(body, ct, d, int64(len(body)), false)
		f.Add(body, ct, "", int64(-1), true)
		f.Add(index, ct, "", int64(len(index)), false)
	}
	f.Add(body[:len(body)/2], MediaTypeOCIManifest, "", int64(len(body)), false)
	f.Add(append(body, body...), MediaTypeOCIManifest, "", int64(-1), false)
	f.Fuzz(func(t *testing.T, body []byte, contentType, announced string, length int64, askByDigest bool) {
		if length < -1 {
			return // net/http's reading of Content-Length
		}
		resp := &http.Response{Header: http.Header{}, ContentLength: length}
		if contentType != "" {
			resp.Header.Set("Content-Type", contentType)
		}
		if announced != "" {
			resp.Header.Set("Docker-Content-Digest", announced)
		}
		var want cache.Digest
		if askByDigest {
			want = cache.FromBytes(cache.SHA256, body)
		}
		mt, got, err := checkUpstreamManifest(resp, body, want)
		if err != nil {
			return
		}
		if !upstreamManifestTypes[mt] {
			t.Fatalf("kept under media type %q", mt)
		}
		if length >= 0 && int64(len(body)) != length {
			t.Fatalf("kept %d bytes announced as %d", len(body), length)
		}
		var obj map[string]json.RawMessage
		if json.Unmarshal(body, &obj) != nil {
			t.Fatalf("kept a body that is not one JSON object: %q", body)
		}
		if got != cache.FromBytes(got.Algorithm, body) {
			t.Fatalf("kept under digest %s, not the bytes' own", got)
		}
		if announced != "" && got.String() != announced {
			if a, err := cache.ParseDigest(announced); err != nil || a != cache.FromBytes(a.Algorithm, body) {
				t.Fatalf("kept despite Docker-Content-Digest %q", announced)
			}
		}
		if askByDigest && got != want {
			t.Fatalf("asked for %s, kept %s", want, got)
		}
		if m := manifestMeta(mt, body); m.MediaType != mt {
			t.Fatalf("metadata says media type %q, kept under %q", m.MediaType, mt)
		}
	})
}
