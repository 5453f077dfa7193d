package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache"
)

const (
	mtManifest = "application/vnd.oci.image.manifest.v1+json"
	mtIndex    = "application/vnd.oci.image.index.v1+json"
)

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestManifestPutGetDelete(t *testing.T) {
	tr := newTestRegistry(t)
	body := tr.image("m/repo", "layer one", "layer two")
	d := cache.FromBytes(cache.SHA256, body)

	resp := tr.pushManifest("m/repo", "v1", mtManifest, body)
	tr.wantStatus(resp, http.StatusCreated)
	if got, want := resp.Header.Get("Location"), "/v2/m/repo/manifests/"+d.String(); got != want {
		t.Errorf("Location %q, want %q", got, want)
	}
	if resp.Header.Get("Docker-Content-Digest") != d.String() {
		t.Errorf("Docker-Content-Digest %q", resp.Header.Get("Docker-Content-Digest"))
	}
	if resp.Header.Get("OCI-Subject") != "" {
		t.Errorf("OCI-Subject on a manifest without subject")
	}

	for _, ref := range []string{"v1", d.String()} {
		for _, m := range []string{"GET", "HEAD"} {
			resp := tr.do(m, "/v2/m/repo/manifests/"+ref, nil, "Accept", mtIndex)
			tr.wantStatus(resp, http.StatusOK)
			if m == "GET" && !bytes.Equal(resp.body, body) {
				t.Errorf("%s %s: bytes differ", m, ref)
			}
			for h, want := range map[string]string{
				"Content-Type":          mtManifest,
				"Content-Length":        strconv.Itoa(len(body)),
				"Docker-Content-Digest": d.String(),
			} {
				if got := resp.Header.Get(h); got != want {
					t.Errorf("%s %s: %s %q, want %q", m, ref, h, got, want)
				}
			}
		}
	}

	// PUT by digest with ?tag= sets every tag and echoes them.
	resp = tr.do("PUT", "/v2/m/repo/manifests/"+d.String()+"?tag=a&tag=b&tag=a", body, "Content-Type", mtManifest)
	tr.wantStatus(resp, http.StatusCreated)
	if got := resp.Header.Values("OCI-Tag"); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("OCI-Tag %q", got)
	}
	resp = tr.do("PUT", "/v2/m/repo/manifests/c?tag=d", body, "Content-Type", mtManifest)
	tr.wantStatus(resp, http.StatusCreated)
	if got := resp.Header.Values("OCI-Tag"); !slices.Equal(got, []string{"c", "d"}) {
		t.Errorf("OCI-Tag %q", got)
	}
	tags := tr.tags("m/repo", "")
	if !slices.Equal(tags.Tags, []string{"a", "b", "c", "d", "v1"}) {
		t.Errorf("tags %q", tags.Tags)
	}

	// Delete by tag removes only the tag.
	tr.wantStatus(tr.do("DELETE", "/v2/m/repo/manifests/a", nil), http.StatusAccepted)
	tr.wantError(tr.do("GET", "/v2/m/repo/manifests/a", nil), 404, CodeManifestUnknown)
	tr.wantError(tr.do("DELETE", "/v2/m/repo/manifests/a", nil), 404, CodeManifestUnknown)
	tr.wantStatus(tr.do("GET", "/v2/m/repo/manifests/b", nil), http.StatusOK)

	// Delete by digest removes the manifest and its tags.
	tr.wantStatus(tr.do("DELETE", "/v2/m/repo/manifests/"+d.String(), nil), http.StatusAccepted)
	for _, ref := range []string{"b", "v1", d.String()} {
		tr.wantError(tr.do("GET", "/v2/m/repo/manifests/"+ref, nil), 404, CodeManifestUnknown)
		tr.wantError(tr.do("HEAD", "/v2/m/repo/manifests/"+ref, nil), 404, CodeManifestUnknown)
	}
	tr.wantError(tr.do("DELETE", "/v2/m/repo/manifests/"+d.String(), nil), 404, CodeManifestUnknown)
	if tags := tr.tags("m/repo", ""); len(tags.Tags) != 0 {
		t.Errorf("tags left after delete: %q", tags.Tags)
	}
}

func TestManifestSHA512(t *testing.T) {
	tr := newTestRegistry(t)
	body := tr.image("s", "layer")
	d := cache.FromBytes(cache.SHA512, body)
	resp := tr.do("PUT", "/v2/s/manifests/"+d.String()+"?tag=t512", body, "Content-Type", mtManifest)
	tr.wantStatus(resp, http.StatusCreated)
	if resp.Header.Get("Docker-Content-Digest") != d.String() {
		t.Errorf("digest %q", resp.Header.Get("Docker-Content-Digest"))
	}
	get := tr.do("GET", "/v2/s/manifests/t512", nil)
	tr.wantStatus(get, http.StatusOK)
	if get.Header.Get("Docker-Content-Digest") != d.String() || !bytes.Equal(get.body, body) {
		t.Errorf("GET by tag: digest %q", get.Header.Get("Docker-Content-Digest"))
	}
}

func TestManifestErrors(t *testing.T) {
	tr := newTestRegistry(t, func(c *Config) { c.MaxManifestSize = 2000 })
	good := tr.image("e", "layer")
	goodDigest := cache.FromBytes(cache.SHA256, good)
	var cfgDesc map[string]any
	{
		var m map[string]any
		_ = json.Unmarshal(good, &m)
		cfgDesc = m["config"].(map[string]any)
	}
	missing := cache.FromBytes(cache.SHA256, []byte("missing"))
	missingDesc := map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": missing.String(), "size": 7}

	tests := []struct {
		name   string
		ref    string
		ct     string
		body   []byte
		status int
		code   string
	}{
		{"not JSON", "t", mtManifest, []byte("nope"), 400, CodeManifestInvalid},
		{"JSON array", "t", mtManifest, []byte("[]"), 400, CodeManifestInvalid},
		{"trailing data", "t", mtManifest, append(append([]byte{}, good...), []byte("{}")...), 400, CodeManifestInvalid},
		{"schema 1", "t", mtManifest, []byte(`{"schemaVersion":1}`), 400, CodeManifestInvalid},
		{"media type disagrees", "t", mtIndex, good, 400, CodeManifestInvalid},
		{"bad Content-Type", "t", "/;;", good, 400, CodeManifestInvalid},
		{"image without config", "t", mtManifest, mustJSON(t, map[string]any{"schemaVersion": 2, "mediaType": mtManifest, "layers": []any{}}), 400, CodeManifestInvalid},
		{"missing layer", "t", mtManifest, mustJSON(t, map[string]any{"schemaVersion": 2, "mediaType": mtManifest, "config": cfgDesc, "layers": []any{missingDesc}}), 400, CodeManifestBlobUnknown},
		{"missing config", "t", mtManifest, mustJSON(t, map[string]any{"schemaVersion": 2, "mediaType": mtManifest, "config": missingDesc, "layers": []any{}}), 400, CodeManifestBlobUnknown},
		{"layer digest invalid", "t", mtManifest, mustJSON(t, map[string]any{"schemaVersion": 2, "mediaType": mtManifest, "config": cfgDesc, "layers": []any{map[string]any{"mediaType": "x", "digest": "sha256:zz", "size": 1}}}), 400, CodeManifestInvalid},
		{"index child digest invalid", "t", mtIndex, mustJSON(t, map[string]any{"schemaVersion": 2, "mediaType": mtIndex, "manifests": []any{map[string]any{"mediaType": mtManifest, "digest": "sha256:zz", "size": 10}}}), 400, CodeManifestInvalid},
		{"subject digest invalid", "t", mtManifest, mustJSON(t, map[string]any{"schemaVersion": 2, "mediaType": mtManifest, "config": cfgDesc, "layers": []any{}, "subject": map[string]any{"mediaType": mtManifest, "digest": "sha256:1", "size": 1}}), 400, CodeManifestInvalid},
		{"digest in URL differs", missing.String(), mtManifest, good, 400, CodeDigestInvalid},
		{"digest in URL invalid", "sha256:baddigeststring", mtManifest, good, 400, CodeDigestInvalid},
		{"tag invalid", "-bad", mtManifest, good, 400, CodeTagInvalid},
		{"tag parameter invalid", "t?tag=.bad", mtManifest, good, 400, CodeTagInvalid},
		{"too large", "t", mtManifest, bytes.Repeat([]byte(" "), 2001), 413, CodeSizeInvalid},
		// Refused the same way on every metadata backend (PostgreSQL's
		// text holds no NUL), not stored by one and refused by another.
		{"artifactType too long", "t", mtManifest, mustJSON(t, map[string]any{"schemaVersion": 2, "mediaType": mtManifest, "artifactType": "application/" + strings.Repeat("x", 1013), "config": cfgDesc, "layers": []any{}}), 400, CodeManifestInvalid},
		{"layer size negative", "t", mtManifest, mustJSON(t, map[string]any{"schemaVersion": 2, "mediaType": mtManifest, "config": cfgDesc, "layers": []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": cfgDesc["digest"], "size": -1}}}), 400, CodeManifestInvalid},
		{"config size negative", "t", mtManifest, mustJSON(t, map[string]any{"schemaVersion": 2, "mediaType": mtManifest, "config": map[string]any{"mediaType": cfgDesc["mediaType"], "digest": cfgDesc["digest"], "size": -2}, "layers": []any{}}), 400, CodeManifestInvalid},
		{"index child size negative", "t", mtIndex, mustJSON(t, map[string]any{"schemaVersion": 2, "mediaType": mtIndex, "manifests": []any{map[string]any{"mediaType": mtManifest, "digest": goodDigest.String(), "size": -1}}}), 400, CodeManifestInvalid},
		{"subject size negative", "t", mtManifest, mustJSON(t, map[string]any{"schemaVersion": 2, "mediaType": mtManifest, "config": cfgDesc, "layers": []any{}, "subject": map[string]any{"mediaType": mtManifest, "digest": goodDigest.String(), "size": -1}}), 400, CodeManifestInvalid},
		{"artifactType with NUL", "t", mtManifest, mustJSON(t, map[string]any{"schemaVersion": 2, "mediaType": mtManifest, "artifactType": "application/x\u0000y", "config": cfgDesc, "layers": []any{}}), 400, CodeManifestInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := tr.with(t)
			tr.wantError(tr.do("PUT", "/v2/e/manifests/"+tc.ref, tc.body, "Content-Type", tc.ct), tc.status, tc.code)
		})
	}
	// none of them left anything behind
	tr.wantError(tr.do("GET", "/v2/e/manifests/t", nil), 404, CodeManifestUnknown)

	t.Run("lookups", func(t *testing.T) {
		tr := tr.with(t)
		tr.wantError(tr.do("GET", "/v2/e/manifests/"+goodDigest.String(), nil), 404, CodeManifestUnknown)
		tr.wantError(tr.do("GET", "/v2/e/manifests/sha256:baddigeststring", nil), 400, CodeDigestInvalid)
		tr.wantError(tr.do("GET", "/v2/e/manifests/bad:tag", nil), 400, CodeDigestInvalid)
		tr.wantError(tr.do("GET", "/v2/e/manifests/"+strings.Repeat("x", 129), nil), 400, CodeTagInvalid)
		tr.wantError(tr.do("GET", "/v2/unknown/repo/manifests/latest", nil), 404, CodeManifestUnknown)
		tr.wantError(tr.do("DELETE", "/v2/e/manifests/nope", nil), 404, CodeManifestUnknown)
	})
}

// TestManifestKinds pushes the shapes the conformance data sets and real
// clients produce.
func TestManifestKinds(t *testing.T) {
	tr := newTestRegistry(t)
	repo := "kinds"
	img := tr.image(repo, "l1")
	imgD := cache.FromBytes(cache.SHA256, img)
	tr.wantStatus(tr.pushManifest(repo, imgD.String(), mtManifest, img), 201)
	var imgDoc map[string]any
	_ = json.Unmarshal(img, &imgDoc)
	cfgDesc := imgDoc["config"]
	imgDesc := map[string]any{"mediaType": mtManifest, "digest": imgD.String(), "size": len(img)}

	index := mustJSON(t, map[string]any{"schemaVersion": 2, "mediaType": mtIndex, "manifests": []any{imgDesc}})
	indexD := cache.FromBytes(cache.SHA256, index)
	nested := mustJSON(t, map[string]any{"schemaVersion": 2, "mediaType": mtIndex, "manifests": []any{
		map[string]any{"mediaType": mtIndex, "digest": indexD.String(), "size": len(index)},
	}})

	ndDigest := cache.FromBytes(cache.SHA256, []byte("elsewhere"))
	tests := []struct {
		name string
		ct   string
		body []byte
	}{
		{"index", mtIndex, index},
		{"nested index", mtIndex, nested},
		{"empty index", mtIndex, []byte(`{"schemaVersion":2,"mediaType":"` + mtIndex + `","manifests":[]}`)},
		{"no layers", mtManifest, mustJSON(t, map[string]any{"schemaVersion": 2, "mediaType": mtManifest, "config": cfgDesc, "layers": []any{}})},
		{"no mediaType field", mtManifest, mustJSON(t, map[string]any{"schemaVersion": 2, "config": cfgDesc, "layers": []any{}})},
		{"non-distributable", mtManifest, mustJSON(t, map[string]any{"schemaVersion": 2, "mediaType": mtManifest, "config": cfgDesc, "layers": []any{
			map[string]any{"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", "digest": ndDigest.String(), "size": 9},
			map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ndDigest.String(), "size": 9, "urls": []string{"https://example.com/x"}},
		}})},
		{"subject missing", mtManifest, mustJSON(t, map[string]any{"schemaVersion": 2, "mediaType": mtManifest, "config": cfgDesc, "layers": []any{},
			"subject": map[string]any{"mediaType": mtManifest, "digest": ndDigest.String(), "size": 123}})},
		{"data field and custom fields", mtManifest, mustJSON(t, map[string]any{"schemaVersion": 2, "mediaType": mtManifest, "org.example.custom": "x",
			"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfgDesc.(map[string]any)["digest"], "size": cfgDesc.(map[string]any)["size"], "data": "e30="},
			"layers": []any{}})},
		{"docker schema2", "application/vnd.docker.distribution.manifest.v2+json", mustJSON(t, map[string]any{"schemaVersion": 2,
			"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
			"config":    map[string]any{"mediaType": "application/vnd.docker.container.image.v1+json", "digest": cfgDesc.(map[string]any)["digest"], "size": cfgDesc.(map[string]any)["size"]},
			"layers":    []any{}})},
		{"docker manifest list", "application/vnd.docker.distribution.manifest.list.v2+json", mustJSON(t, map[string]any{"schemaVersion": 2,
			"mediaType": "application/vnd.docker.distribution.manifest.list.v2+json", "manifests": []any{imgDesc}})},
		{"content type with parameters", mtManifest + "; charset=utf-8", mustJSON(t, map[string]any{"schemaVersion": 2, "config": cfgDesc, "layers": []any{}, "annotations": map[string]string{"k": "v"}})},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := tr.with(t)
			tag := fmt.Sprintf("k%d", i)
			tr.wantStatus(tr.pushManifest(repo, tag, tc.ct, tc.body), 201)
			get := tr.do("GET", "/v2/"+repo+"/manifests/"+tag, nil, "Accept", mtManifest)
			tr.wantStatus(get, 200)
			want, _, _ := strings.Cut(tc.ct, ";")
			if get.Header.Get("Content-Type") != want || !bytes.Equal(get.body, tc.body) {
				t.Errorf("got %q, %d bytes", get.Header.Get("Content-Type"), len(get.body))
			}
		})
	}
}

func (tr *testRegistry) tags(repo, query string) tagList {
	tr.t.Helper()
	resp := tr.do("GET", "/v2/"+repo+"/tags/list"+query, nil)
	tr.wantStatus(resp, 200)
	var tl tagList
	if err := json.Unmarshal(resp.body, &tl); err != nil {
		tr.t.Fatal(err)
	}
	if tl.Name != repo || tl.Tags == nil {
		tr.t.Fatalf("tag list %s", resp.body)
	}
	return tl
}

func TestTagsAndCatalog(t *testing.T) {
	tr := newTestRegistry(t)
	body := tr.image("t/one", "l")
	d := cache.FromBytes(cache.SHA256, body)
	all := []string{"a", "b", "c", "d", "e"}
	q := ""
	for _, tag := range all {
		q += "&tag=" + tag
	}
	tr.wantStatus(tr.do("PUT", "/v2/t/one/manifests/"+d.String()+"?"+q[1:], body, "Content-Type", mtManifest), 201)
	tr.image("t/two")
	tr.image("t/three")

	pages := []struct {
		query string
		want  []string
		link  string
	}{
		{"", all, ""},
		{"?n=2", []string{"a", "b"}, `</v2/t/one/tags/list?n=2&last=b>; rel="next"`},
		{"?n=2&last=b", []string{"c", "d"}, `</v2/t/one/tags/list?n=2&last=d>; rel="next"`},
		{"?n=2&last=d", []string{"e"}, ""},
		{"?last=c", []string{"d", "e"}, ""},
		{"?n=0", []string{}, ""},
		{"?n=5", all, ""},
	}
	for _, p := range pages {
		resp := tr.do("GET", "/v2/t/one/tags/list"+p.query, nil)
		tr.wantStatus(resp, 200)
		var tl tagList
		_ = json.Unmarshal(resp.body, &tl)
		if !slices.Equal(tl.Tags, p.want) || resp.Header.Get("Link") != p.link {
			t.Errorf("%s: tags %q link %q, want %q %q", p.query, tl.Tags, resp.Header.Get("Link"), p.want, p.link)
		}
	}
	tr.wantError(tr.do("GET", "/v2/t/one/tags/list?n=-1", nil), 400, CodePaginationInvalid)
	tr.wantError(tr.do("GET", "/v2/t/one/tags/list?n=x", nil), 400, CodePaginationInvalid)
	tr.wantError(tr.do("GET", "/v2/t/none/tags/list", nil), 404, CodeNameUnknown)
	// a repository with blobs but no tags lists empty
	if tl := tr.tags("t/two", ""); len(tl.Tags) != 0 {
		t.Errorf("t/two tags %q", tl.Tags)
	}

	cat := func(query string) ([]string, string) {
		resp := tr.do("GET", "/v2/_catalog"+query, nil)
		tr.wantStatus(resp, 200)
		var cl catalogList
		if err := json.Unmarshal(resp.body, &cl); err != nil {
			t.Fatal(err)
		}
		return cl.Repositories, resp.Header.Get("Link")
	}
	if repos, link := cat(""); !slices.Equal(repos, []string{"t/one", "t/three", "t/two"}) || link != "" {
		t.Errorf("catalog %q %q", repos, link)
	}
	if repos, link := cat("?n=1"); !slices.Equal(repos, []string{"t/one"}) || link != `</v2/_catalog?n=1&last=t%2Fone>; rel="next"` {
		t.Errorf("catalog n=1: %q %q", repos, link)
	}
	if repos, link := cat("?n=1&last=t%2Fone"); !slices.Equal(repos, []string{"t/three"}) || link == "" {
		t.Errorf("catalog page 2: %q %q", repos, link)
	}
	tr.wantError(tr.do("GET", "/v2/_catalog?n=abc", nil), 400, CodePaginationInvalid)
}

// referrerSubject pushes an image to repo as the subject of referrers:
// its digest, its descriptor, and that of an empty config for them.
func referrerSubject(tr *testRegistry, repo string) (sd cache.Digest, subjDesc, emptyDesc map[string]any) {
	subject := tr.image(repo, "l")
	sd = cache.FromBytes(cache.SHA256, subject)
	tr.wantStatus(tr.pushManifest(repo, "subject", mtManifest, subject), 201)
	empty := tr.pushBlob(repo, []byte("{}"))
	emptyDesc = map[string]any{"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty.String(), "size": 2}
	subjDesc = map[string]any{"mediaType": mtManifest, "digest": sd.String(), "size": len(subject)}
	return sd, subjDesc, emptyDesc
}

func TestReferrers(t *testing.T) {
	tr := newTestRegistry(t)
	repo := "ref/repo"
	sd, subjDesc, emptyDesc := referrerSubject(tr, repo)

	type referrer struct {
		body []byte
		at   string
		mt   string
	}
	var refs []referrer
	for i, at := range []string{"application/vnd.example.sig", "application/vnd.example.sbom", ""} {
		m := map[string]any{"schemaVersion": 2, "mediaType": mtManifest, "config": emptyDesc, "layers": []any{emptyDesc},
			"subject": subjDesc, "annotations": map[string]string{"n": strconv.Itoa(i)}}
		want := "application/vnd.oci.empty.v1+json" // config media type stands in
		if at != "" {
			m["artifactType"] = at
			want = at
		}
		b := mustJSON(t, m)
		resp := tr.pushManifest(repo, cache.FromBytes(cache.SHA256, b).String(), mtManifest, b)
		tr.wantStatus(resp, 201)
		if resp.Header.Get("OCI-Subject") != sd.String() {
			t.Errorf("OCI-Subject %q", resp.Header.Get("OCI-Subject"))
		}
		refs = append(refs, referrer{b, want, mtManifest})
	}
	idx := mustJSON(t, map[string]any{"schemaVersion": 2, "mediaType": mtIndex, "artifactType": "application/vnd.example.idx", "manifests": []any{}, "subject": subjDesc})
	tr.wantStatus(tr.pushManifest(repo, cache.FromBytes(cache.SHA256, idx).String(), mtIndex, idx), 201)
	refs = append(refs, referrer{idx, "application/vnd.example.idx", mtIndex})

	list := func(query string) (referrerIndex, http.Header) {
		resp := tr.do("GET", "/v2/"+repo+"/referrers/"+sd.String()+query, nil)
		tr.wantStatus(resp, 200)
		if resp.Header.Get("Content-Type") != mtIndex {
			t.Errorf("Content-Type %q", resp.Header.Get("Content-Type"))
		}
		var ri referrerIndex
		if err := json.Unmarshal(resp.body, &ri); err != nil {
			t.Fatal(err)
		}
		if ri.SchemaVersion != 2 || ri.MediaType != mtIndex || ri.Manifests == nil {
			t.Errorf("not an index: %s", resp.body)
		}
		return ri, resp.Header
	}
	ri, hd := list("")
	if len(ri.Manifests) != len(refs) || hd.Get("OCI-Filters-Applied") != "" {
		t.Fatalf("referrers: %d entries, filters %q", len(ri.Manifests), hd.Get("OCI-Filters-Applied"))
	}
	for _, r := range refs {
		d := cache.FromBytes(cache.SHA256, r.body).String()
		i := slices.IndexFunc(ri.Manifests, func(m referrerDescriptor) bool { return m.Digest == d })
		if i < 0 {
			t.Errorf("referrer %s missing", d)
			continue
		}
		got := ri.Manifests[i]
		if got.ArtifactType != r.at || got.MediaType != r.mt || got.Size != int64(len(r.body)) {
			t.Errorf("referrer %+v, want artifactType %q", got, r.at)
		}
	}
	ri, hd = list("?artifactType=application/vnd.example.sbom")
	if len(ri.Manifests) != 1 || ri.Manifests[0].ArtifactType != "application/vnd.example.sbom" || hd.Get("OCI-Filters-Applied") != "artifactType" {
		t.Errorf("filtered: %+v %q", ri.Manifests, hd.Get("OCI-Filters-Applied"))
	}
	if ri.Manifests[0].Annotations["n"] != "1" {
		t.Errorf("annotations %v", ri.Manifests[0].Annotations)
	}

	// deleting a referrer removes its entry
	tr.wantStatus(tr.do("DELETE", "/v2/"+repo+"/manifests/"+cache.FromBytes(cache.SHA256, refs[0].body).String(), nil), 202)
	if ri, _ = list(""); len(ri.Manifests) != len(refs)-1 {
		t.Errorf("after delete: %d entries", len(ri.Manifests))
	}

	// unknown subject and unknown repository: empty index
	other := cache.FromBytes(cache.SHA512, []byte("x"))
	for _, p := range []string{"/v2/" + repo + "/referrers/" + other.String(), "/v2/nobody/referrers/" + sd.String()} {
		resp := tr.do("GET", p, nil)
		tr.wantStatus(resp, 200)
		if !strings.Contains(string(resp.body), `"manifests":[]`) {
			t.Errorf("%s: %s", p, resp.body)
		}
	}
	tr.wantError(tr.do("GET", "/v2/"+repo+"/referrers/sha256:nope", nil), 400, CodeDigestInvalid)
	tr.wantError(tr.do("GET", "/v2/"+repo+"/referrers/latest", nil), 400, CodeDigestInvalid)
}

// TestPushTagsBounded: a manifest push names at most maxPushTags tags,
// each up to the longest a tag may be, in the longest repository name;
// one more is refused with 400 and tags nothing, where the store's
// transaction limit answered 500 (4,000 long tags).
func TestPushTagsBounded(t *testing.T) {
	tr := newTestRegistry(t)
	repo := strings.Repeat("n", MaxNameLength)
	body := tr.image(repo, "l")
	d := cache.FromBytes(cache.SHA256, body).String()
	query := func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "&tag=%0128d", i)
		}
		return b.String()[1:]
	}
	resp := tr.do("PUT", "/v2/"+repo+"/manifests/"+d+"?"+query(maxPushTags+1), body, "Content-Type", mtManifest)
	tr.wantError(resp, http.StatusBadRequest, CodeTagInvalid)
	if tl := tr.tags(repo, ""); len(tl.Tags) != 0 {
		t.Fatalf("a refused push made %d tags", len(tl.Tags))
	}
	resp = tr.do("PUT", "/v2/"+repo+"/manifests/"+d+"?"+query(maxPushTags), body, "Content-Type", mtManifest)
	tr.wantStatus(resp, http.StatusCreated)
	if tl := tr.tags(repo, ""); len(tl.Tags) != maxPushTags {
		t.Errorf("%d tags, want %d", len(tl.Tags), maxPushTags)
	}
}

// pageRecorder is a store that records the largest page of tags asked of
// it: what one reader of a tag list holds.
type pageRecorder struct {
	Store
	largest atomic.Int64
}

func (p *pageRecorder) Tags(ctx context.Context, repo, last string, n int) ([]string, bool, error) {
	if int64(n) > p.largest.Load() || n < 0 {
		p.largest.Store(int64(n))
	}
	return p.Store.Tags(ctx, repo, last, n)
}

// TestTagsLongListStreamed: asked for the whole list (no n), a repository
// with more tags than one page of the store gets them all in one valid
// answer, in order and without a Link, while the store is read a page at
// a time; n and last still page as before, and a short list keeps its
// Content-Length.
func TestTagsLongListStreamed(t *testing.T) {
	var rec *pageRecorder
	tr := newTestRegistry(t, func(c *Config) { rec = &pageRecorder{Store: c.Store}; c.Store = rec })
	repo := "t/many"
	body := tr.image(repo, "l")
	d := cache.FromBytes(cache.SHA256, body)
	var all []string
	for len(all) < 2*tagStreamPage+1 {
		q := ""
		for range 100 {
			tag := fmt.Sprintf("v%05d", len(all))
			all = append(all, tag)
			q += "&tag=" + tag
		}
		tr.wantStatus(tr.do("PUT", "/v2/"+repo+"/manifests/"+d.String()+"?"+q[1:], body, "Content-Type", mtManifest), 201)
	}
	rec.largest.Store(0)
	resp := tr.do("GET", "/v2/"+repo+"/tags/list", nil)
	tr.wantStatus(resp, 200)
	var tl tagList
	if err := json.Unmarshal(resp.body, &tl); err != nil {
		t.Fatalf("not JSON: %v: %.200s", err, resp.body)
	}
	if tl.Name != repo || !slices.Equal(tl.Tags, all) {
		t.Errorf("whole list: %q with %d tags, want %d in order", tl.Name, len(tl.Tags), len(all))
	}
	if resp.Header.Get("Link") != "" || resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("whole list: Link %q, Content-Type %q", resp.Header.Get("Link"), resp.Header.Get("Content-Type"))
	}
	if got := rec.largest.Load(); got != tagStreamPage {
		t.Errorf("the store was asked for a page of %d tags, want %d", got, tagStreamPage)
	}
	// From the middle, and paged: as before.
	if tl := tr.tags(repo, "?last="+all[1500]); !slices.Equal(tl.Tags, all[1501:]) {
		t.Errorf("?last: %d tags, want %d", len(tl.Tags), len(all)-1501)
	}
	resp = tr.do("GET", "/v2/"+repo+"/tags/list?n=3&last="+all[5], nil)
	tr.wantStatus(resp, 200)
	_ = json.Unmarshal(resp.body, &tl)
	if !slices.Equal(tl.Tags, all[6:9]) || resp.Header.Get("Link") == "" || resp.Header.Get("Content-Length") == "" {
		t.Errorf("?n=3: %q, Link %q", tl.Tags, resp.Header.Get("Link"))
	}
	// More than a page asked for: a page, and a Link to the rest.
	rec.largest.Store(0)
	resp = tr.do("GET", "/v2/"+repo+"/tags/list?n=1000000", nil)
	tr.wantStatus(resp, 200)
	_ = json.Unmarshal(resp.body, &tl)
	if want := `</v2/` + repo + `/tags/list?n=1000&last=` + all[999] + `>; rel="next"`; !slices.Equal(tl.Tags, all[:1000]) || resp.Header.Get("Link") != want {
		t.Errorf("?n=1000000: %d tags, Link %q", len(tl.Tags), resp.Header.Get("Link"))
	}
	if got := rec.largest.Load(); got != tagStreamPage {
		t.Errorf("?n=1000000: the store was asked for a page of %d tags, want %d", got, tagStreamPage)
	}
	// The last page alone fits: it has its length.
	resp = tr.do("GET", "/v2/"+repo+"/tags/list?last="+all[len(all)-3], nil)
	if resp.Header.Get("Content-Length") == "" {
		t.Error("a short list has no Content-Length")
	}
}

// TestReferrersLongList: a list longer than the store pages it is read
// in is one whole, valid index (streamed), in digest order, filtered
// across pages when asked; a short one keeps its Content-Length.
func TestReferrersLongList(t *testing.T) {
	tr := newTestRegistry(t)
	repo := "ref/long"
	sd, subjDesc, emptyDesc := referrerSubject(tr, repo)
	n := 3*referrerPage + 1
	var all, sigs []string
	for i := range n {
		at := "application/vnd.example.sbom"
		if i%3 == 0 {
			at = "application/vnd.example.sig"
		}
		b := mustJSON(t, map[string]any{"schemaVersion": 2, "mediaType": mtManifest, "artifactType": at, "config": emptyDesc,
			"layers": []any{emptyDesc}, "subject": subjDesc, "annotations": map[string]string{"n": strconv.Itoa(i)}})
		d := cache.FromBytes(cache.SHA256, b).String()
		tr.wantStatus(tr.pushManifest(repo, d, mtManifest, b), 201)
		all = append(all, d)
		if i%3 == 0 {
			sigs = append(sigs, d)
		}
	}
	slices.Sort(all)
	slices.Sort(sigs)
	list := func(query string) ([]string, http.Header) {
		resp := tr.do("GET", "/v2/"+repo+"/referrers/"+sd.String()+query, nil)
		tr.wantStatus(resp, 200)
		var ri referrerIndex
		if err := json.Unmarshal(resp.body, &ri); err != nil {
			t.Fatalf("%s: not JSON: %v", query, err)
		}
		if ri.SchemaVersion != 2 || ri.MediaType != mtIndex || resp.Header.Get("Content-Type") != mtIndex {
			t.Errorf("%s: not an index: %.200s", query, resp.body)
		}
		var got []string
		for _, m := range ri.Manifests {
			if m.Annotations["n"] == "" || m.Size == 0 {
				t.Errorf("%s: descriptor %+v", query, m)
			}
			got = append(got, m.Digest)
		}
		return got, resp.Header
	}
	if got, _ := list(""); !slices.Equal(got, all) {
		t.Errorf("long list: %d descriptors, want the %d in digest order", len(got), len(all))
	}
	got, hd := list("?artifactType=application/vnd.example.sig")
	if !slices.Equal(got, sigs) || hd.Get("OCI-Filters-Applied") != "artifactType" {
		t.Errorf("filtered long list: %d descriptors, want %d", len(got), len(sigs))
	}
	got, hd = list("?artifactType=application/vnd.example.none")
	if len(got) != 0 || hd.Get("Content-Length") == "" {
		t.Errorf("filtered to nothing: %d descriptors, Content-Length %q", len(got), hd.Get("Content-Length"))
	}
}
