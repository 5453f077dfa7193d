package registry

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache"
)

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestUploadFlows pushes a blob each way the spec allows, with sha256 and
// sha512, and reads it back.
func TestUploadFlows(t *testing.T) {
	shared := newTestRegistry(t)
	flows := []struct {
		name string
		push func(tr *testRegistry, t *testing.T, repo string, d cache.Digest, data []byte) response
	}{
		{"monolithic POST", func(tr *testRegistry, t *testing.T, repo string, d cache.Digest, data []byte) response {
			return tr.do("POST", "/v2/"+repo+"/blobs/uploads/?digest="+d.String(), data, "Content-Type", "application/octet-stream")
		}},
		{"POST then PUT", func(tr *testRegistry, t *testing.T, repo string, d cache.Digest, data []byte) response {
			loc := tr.startUpload(repo)
			return tr.do("PUT", loc+"?digest="+d.String(), data)
		}},
		{"chunked PATCH", func(tr *testRegistry, t *testing.T, repo string, d cache.Digest, data []byte) response {
			loc := tr.startUpload(repo)
			for off := 0; off < len(data); off += 1000 {
				end := min(off+1000, len(data))
				resp := tr.do("PATCH", loc, data[off:end], "Content-Range", fmt.Sprintf("%d-%d", off, end-1))
				tr.wantStatus(resp, http.StatusAccepted)
				if got, want := resp.Header.Get("Range"), fmt.Sprintf("0-%d", end-1); got != want {
					t.Fatalf("Range %q, want %q", got, want)
				}
				loc = resp.Header.Get("Location")
			}
			return tr.do("PUT", loc+"?digest="+d.String(), nil)
		}},
		{"chunked PATCH, last chunk in PUT", func(tr *testRegistry, t *testing.T, repo string, d cache.Digest, data []byte) response {
			loc := tr.startUpload(repo)
			half := len(data) / 2
			resp := tr.do("PATCH", loc, data[:half], "Content-Range", fmt.Sprintf("0-%d", half-1))
			tr.wantStatus(resp, http.StatusAccepted)
			return tr.do("PUT", loc+"?digest="+d.String(), data[half:], "Content-Range", fmt.Sprintf("%d-%d", half, len(data)-1))
		}},
		{"streamed PATCH", func(tr *testRegistry, t *testing.T, repo string, d cache.Digest, data []byte) response {
			loc := tr.startUpload(repo)
			resp := tr.do("PATCH", loc, data)
			tr.wantStatus(resp, http.StatusAccepted)
			st := tr.do("GET", loc, nil)
			tr.wantStatus(st, http.StatusNoContent)
			if got, want := st.Header.Get("Range"), fmt.Sprintf("0-%d", len(data)-1); got != want {
				t.Fatalf("status Range %q, want %q", got, want)
			}
			return tr.do("PUT", resp.Header.Get("Location")+"?digest="+d.String(), nil)
		}},
	}
	for _, alg := range []cache.Algorithm{cache.SHA256, cache.SHA512} {
		for _, f := range flows {
			t.Run(string(alg)+"/"+f.name, func(t *testing.T) {
				tr := shared.with(t)
				repo := "flows/repo"
				data := randomBytes(t, 4321)
				d := cache.FromBytes(alg, data)
				before := len(tr.obs.committed)
				resp := f.push(tr, t, repo, d, data)
				tr.wantStatus(resp, http.StatusCreated)
				if got := resp.Header.Get("Docker-Content-Digest"); got != d.String() {
					t.Errorf("Docker-Content-Digest %q", got)
				}
				if got, want := resp.Header.Get("Location"), "/v2/"+repo+"/blobs/"+d.String(); got != want {
					t.Errorf("Location %q, want %q", got, want)
				}
				if len(tr.obs.committed) != before+1 {
					t.Errorf("UploadCommitted not called")
				}
				get := tr.do("GET", "/v2/"+repo+"/blobs/"+d.String(), nil)
				tr.wantStatus(get, http.StatusOK)
				if !bytes.Equal(get.body, data) {
					t.Fatalf("content differs")
				}
				for h, want := range map[string]string{
					"Content-Type":          "application/octet-stream",
					"Content-Length":        strconv.Itoa(len(data)),
					"Docker-Content-Digest": d.String(),
					"ETag":                  `"` + d.String() + `"`,
				} {
					if got := get.Header.Get(h); got != want {
						t.Errorf("%s: %q, want %q", h, got, want)
					}
				}
				head := tr.do("HEAD", "/v2/"+repo+"/blobs/"+d.String(), nil)
				tr.wantStatus(head, http.StatusOK)
				if head.ContentLength != int64(len(data)) || len(head.body) != 0 {
					t.Errorf("HEAD: length %d, body %d bytes", head.ContentLength, len(head.body))
				}
				del := tr.do("DELETE", "/v2/"+repo+"/blobs/"+d.String(), nil)
				tr.wantStatus(del, http.StatusAccepted)
				tr.wantError(tr.do("GET", "/v2/"+repo+"/blobs/"+d.String(), nil), 404, CodeBlobUnknown)
			})
		}
	}
}

// startUpload opens a session and returns its Location.
func (tr *testRegistry) startUpload(repo string) string {
	tr.t.Helper()
	resp := tr.do("POST", "/v2/"+repo+"/blobs/uploads/", nil)
	tr.wantStatus(resp, http.StatusAccepted)
	loc := resp.Header.Get("Location")
	if loc == "" || resp.Header.Get("Docker-Upload-UUID") == "" {
		tr.t.Fatalf("POST: Location %q, Docker-Upload-UUID %q", loc, resp.Header.Get("Docker-Upload-UUID"))
	}
	if r := resp.Header.Get("Range"); r != "" {
		tr.t.Fatalf("empty session announced Range %q", r)
	}
	return loc
}

func TestEmptyBlob(t *testing.T) {
	tr := newTestRegistry(t)
	for _, alg := range []cache.Algorithm{cache.SHA256, cache.SHA512} {
		d := cache.FromBytes(alg, nil)
		tr.wantStatus(tr.do("POST", "/v2/e/blobs/uploads/?digest="+d.String(), nil), http.StatusCreated)
		get := tr.do("GET", "/v2/e/blobs/"+d.String(), nil)
		tr.wantStatus(get, http.StatusOK)
		if get.Header.Get("Content-Length") != "0" {
			t.Errorf("Content-Length %q", get.Header.Get("Content-Length"))
		}
	}
}

func TestUploadErrors(t *testing.T) {
	tr := newTestRegistry(t)
	data := randomBytes(t, 3000)
	d := cache.FromBytes(cache.SHA256, data)
	wrong := cache.FromBytes(cache.SHA256, []byte("other"))

	t.Run("monolithic digest mismatch", func(t *testing.T) {
		tr := tr.with(t)
		tr.wantError(tr.do("POST", "/v2/r/blobs/uploads/?digest="+wrong.String(), data), 400, CodeDigestInvalid)
		tr.wantError(tr.do("HEAD", "/v2/r/blobs/"+wrong.String(), nil), 404, CodeBlobUnknown)
	})
	t.Run("invalid digests", func(t *testing.T) {
		tr := tr.with(t)
		for _, bad := range []string{"sha256:abc", "sha256:" + hex64('A'), "md5:abc", "nonsense", "sha256:" + hex64('g')} {
			tr.wantError(tr.do("POST", "/v2/r/blobs/uploads/?digest="+bad, data), 400, CodeDigestInvalid)
			tr.wantError(tr.do("GET", "/v2/r/blobs/"+bad, nil), 400, CodeDigestInvalid)
			tr.wantError(tr.do("DELETE", "/v2/r/blobs/"+bad, nil), 400, CodeDigestInvalid)
			tr.wantError(tr.do("POST", "/v2/r/blobs/uploads/?mount="+bad, nil), 400, CodeDigestInvalid)
		}
	})
	t.Run("PUT digest mismatch keeps the session", func(t *testing.T) {
		tr := tr.with(t)
		loc := tr.startUpload("r")
		tr.wantStatus(tr.do("PATCH", loc, data), http.StatusAccepted)
		tr.wantError(tr.do("PUT", loc+"?digest="+wrong.String(), nil), 400, CodeDigestInvalid)
		tr.wantStatus(tr.do("PUT", loc+"?digest="+d.String(), nil), http.StatusCreated)
	})
	t.Run("PUT without digest", func(t *testing.T) {
		tr := tr.with(t)
		loc := tr.startUpload("r")
		tr.wantError(tr.do("PUT", loc, data), 400, CodeDigestInvalid)
	})
	t.Run("out of order chunk", func(t *testing.T) {
		tr := tr.with(t)
		loc := tr.startUpload("r")
		tr.wantStatus(tr.do("PATCH", loc, data[:1000], "Content-Range", "0-999"), http.StatusAccepted)
		for _, cr := range []string{"0-999", "1500-1999", "500-1499"} {
			resp := tr.do("PATCH", loc, data[:1000], "Content-Range", cr)
			tr.wantError(resp, 416, CodeRangeInvalid)
			if resp.Header.Get("Range") != "0-999" || resp.Header.Get("Location") == "" {
				t.Errorf("416 headers: Range %q Location %q", resp.Header.Get("Range"), resp.Header.Get("Location"))
			}
		}
		// length disagrees with the range
		tr.wantError(tr.do("PATCH", loc, data[:10], "Content-Range", "1000-1999"), 416, CodeRangeInvalid)
		// malformed
		tr.wantError(tr.do("PATCH", loc, data[:10], "Content-Range", "x-y"), 416, CodeRangeInvalid)
		// the final PUT is checked the same way
		tr.wantError(tr.do("PUT", loc+"?digest="+d.String(), data[:1000], "Content-Range", "0-999"), 416, CodeRangeInvalid)
		st := tr.do("GET", loc, nil)
		tr.wantStatus(st, http.StatusNoContent)
		if st.Header.Get("Range") != "0-999" {
			t.Errorf("status Range %q", st.Header.Get("Range"))
		}
		resp := tr.do("PUT", loc+"?digest="+d.String(), data[1000:], "Content-Range", fmt.Sprintf("1000-%d", len(data)-1))
		tr.wantStatus(resp, http.StatusCreated)
	})
	t.Run("empty session status", func(t *testing.T) {
		tr := tr.with(t)
		loc := tr.startUpload("r")
		st := tr.do("GET", loc, nil)
		tr.wantStatus(st, http.StatusNoContent)
		if st.Header.Get("Range") != "0-0" || st.Header.Get("Location") != loc {
			t.Errorf("status headers: Range %q Location %q", st.Header.Get("Range"), st.Header.Get("Location"))
		}
	})
	t.Run("unknown sessions", func(t *testing.T) {
		tr := tr.with(t)
		for _, id := range []string{"0123456789abcdef0123456789abcdef", "..", "a.b"} {
			p := "/v2/r/blobs/uploads/" + id
			tr.wantError(tr.do("GET", p, nil), 404, CodeBlobUploadUnknown)
			tr.wantError(tr.do("PATCH", p, data), 404, CodeBlobUploadUnknown)
			tr.wantError(tr.do("PUT", p+"?digest="+d.String(), data), 404, CodeBlobUploadUnknown)
			tr.wantError(tr.do("DELETE", p, nil), 404, CodeBlobUploadUnknown)
		}
	})
	t.Run("session of another repository", func(t *testing.T) {
		tr := tr.with(t)
		loc := tr.startUpload("r")
		id := loc[len("/v2/r/blobs/uploads/"):]
		tr.wantError(tr.do("GET", "/v2/other/blobs/uploads/"+id, nil), 404, CodeBlobUploadUnknown)
	})
	t.Run("cancel", func(t *testing.T) {
		tr := tr.with(t)
		loc := tr.startUpload("r")
		tr.wantStatus(tr.do("PATCH", loc, data), http.StatusAccepted)
		tr.wantStatus(tr.do("DELETE", loc, nil), http.StatusNoContent)
		tr.wantError(tr.do("GET", loc, nil), 404, CodeBlobUploadUnknown)
		tr.wantError(tr.do("PUT", loc+"?digest="+d.String(), nil), 404, CodeBlobUploadUnknown)
	})
}

func TestBlobReadAndDelete(t *testing.T) {
	tr := newTestRegistry(t)
	data := randomBytes(t, 2048)
	d := tr.pushBlob("a", data)
	tr.pushBlob("b", data)
	p := "/v2/a/blobs/" + d.String()

	t.Run("unknown in a repository that does not link it", func(t *testing.T) {
		tr := tr.with(t)
		tr.wantError(tr.do("GET", "/v2/c/blobs/"+d.String(), nil), 404, CodeBlobUnknown)
		tr.wantError(tr.do("HEAD", "/v2/c/blobs/"+d.String(), nil), 404, CodeBlobUnknown)
		tr.wantError(tr.do("DELETE", "/v2/c/blobs/"+d.String(), nil), 404, CodeBlobUnknown)
	})

	ranges := []struct {
		rng    string
		status int
		from   int
		to     int // exclusive
		cr     string
	}{
		{"bytes=500-1499", 206, 500, 1500, "bytes 500-1499/2048"},
		{"bytes=500-", 206, 500, 2048, "bytes 500-2047/2048"},
		{"bytes=-500", 206, 1548, 2048, "bytes 1548-2047/2048"},
		{"bytes=2000-5000", 206, 2000, 2048, "bytes 2000-2047/2048"},
		{"bytes=500-0", 416, 0, 0, "bytes */2048"},
		{"bytes=5000-10000", 416, 0, 0, "bytes */2048"},
		{"bytes=abc", 416, 0, 0, "bytes */2048"},
		{"items=1-2", 200, 0, 2048, ""},
	}
	for _, rc := range ranges {
		t.Run(rc.rng, func(t *testing.T) {
			tr := tr.with(t)
			resp := tr.do("GET", p, nil, "Range", rc.rng)
			if rc.status == 416 {
				tr.wantError(resp, 416, CodeRangeInvalid)
			} else {
				tr.wantStatus(resp, rc.status)
				if !bytes.Equal(resp.body, data[rc.from:rc.to]) {
					t.Errorf("body differs")
				}
			}
			if got := resp.Header.Get("Content-Range"); got != rc.cr {
				t.Errorf("Content-Range %q, want %q", got, rc.cr)
			}
		})
	}

	t.Run("conditional", func(t *testing.T) {
		tr := tr.with(t)
		resp := tr.do("GET", p, nil, "If-None-Match", `"`+d.String()+`"`)
		tr.wantStatus(resp, http.StatusNotModified)
	})

	t.Run("delete unlinks from one repository only", func(t *testing.T) {
		tr := tr.with(t)
		tr.wantStatus(tr.do("DELETE", p, nil), http.StatusAccepted)
		tr.wantError(tr.do("HEAD", p, nil), 404, CodeBlobUnknown)
		tr.wantError(tr.do("DELETE", p, nil), 404, CodeBlobUnknown)
		tr.wantStatus(tr.do("GET", "/v2/b/blobs/"+d.String(), nil), http.StatusOK)
	})
}

func TestMount(t *testing.T) {
	denied := "secret/repo"
	tr := newTestRegistry(t, func(c *Config) {
		c.CanRead = func(_ *http.Request, repo string) bool { return repo != denied }
	})
	data := randomBytes(t, 100)
	d := tr.pushBlob("src/repo", data)
	hidden := tr.pushBlob(denied, randomBytes(t, 100))
	missing := cache.FromBytes(cache.SHA256, []byte("never pushed"))

	tests := []struct {
		name   string
		query  string
		status int
	}{
		{"from", "mount=" + d.String() + "&from=src/repo", 201},
		{"anonymous", "mount=" + d.String(), 201},
		{"from a repository without it", "mount=" + d.String() + "&from=other/repo", 202},
		{"from an invalid name", "mount=" + d.String() + "&from=Bad", 202},
		{"missing blob", "mount=" + missing.String() + "&from=src/repo", 202},
		{"missing blob anonymous", "mount=" + missing.String(), 202},
		{"from an unreadable repository", "mount=" + hidden.String() + "&from=" + denied, 202},
		{"anonymous, only unreadable holders", "mount=" + hidden.String(), 202},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := tr.with(t)
			repo := fmt.Sprintf("dst/r%d", i)
			resp := tr.do("POST", "/v2/"+repo+"/blobs/uploads/?"+tc.query, nil)
			tr.wantStatus(resp, tc.status)
			if tc.status == 201 {
				if got, want := resp.Header.Get("Location"), "/v2/"+repo+"/blobs/"+d.String(); got != want {
					t.Errorf("Location %q, want %q", got, want)
				}
				tr.wantStatus(tr.do("GET", "/v2/"+repo+"/blobs/"+d.String(), nil), 200)
				if o := tr.obs.last(); o.op != OpBlobGet {
					t.Errorf("op %q", o.op)
				}
			} else {
				loc := resp.Header.Get("Location")
				tr.wantStatus(tr.do("GET", loc, nil), http.StatusNoContent)
			}
		})
	}
}

// TestBlobManyRangesServeWhole: a Range of many small ranges costs the
// server a multipart part per range, far more than the header costs the
// client; past a few ranges the whole blob is served, as RFC 9110 lets a
// server ignore Range. A couple of ranges still get their parts.
func TestBlobManyRangesServeWhole(t *testing.T) {
	tr := newTestRegistry(t)
	data := bytes.Repeat([]byte("0123456789"), 100)
	d := tr.pushBlob("r/app", data)
	var parts []string
	for i := range 200 {
		parts = append(parts, fmt.Sprintf("%d-%d", i, i))
	}
	resp := tr.do("GET", "/v2/r/app/blobs/"+d.String(), nil, "Range", "bytes="+strings.Join(parts, ","))
	if resp.StatusCode != http.StatusOK || !bytes.Equal(resp.body, data) {
		t.Errorf("200 ranges: %d, %d bytes; want 200 with the whole blob", resp.StatusCode, len(resp.body))
	}
	resp = tr.do("GET", "/v2/r/app/blobs/"+d.String(), nil, "Range", "bytes=0-1,10-11")
	if resp.StatusCode != http.StatusPartialContent || !strings.HasPrefix(resp.Header.Get("Content-Type"), "multipart/byteranges") {
		t.Errorf("two ranges: %d %q, want 206 multipart", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}

// TestBlobFileRemovedByHand: a blob whose file was removed behind the
// store's back (by hand, a disk repaired) is unknown to a HEAD as to a
// GET, and to a mount: a client that HEADs before pushing must push it
// again, not reference bytes nobody can pull. Pushed again, it serves.
func TestBlobFileRemovedByHand(t *testing.T) {
	tr := newTestRegistry(t)
	data := randomBytes(t, 2048)
	d := tr.pushBlob("a", data)
	if err := os.Remove(filepath.Join(tr.dir, "blobs", string(d.Algorithm), d.Hex[:2], d.Hex)); err != nil {
		t.Fatal(err)
	}
	p := "/v2/a/blobs/" + d.String()
	tr.wantError(tr.do("HEAD", p, nil), 404, CodeBlobUnknown)
	tr.wantError(tr.do("GET", p, nil), 404, CodeBlobUnknown)
	tr.wantStatus(tr.do("POST", "/v2/b/blobs/uploads/?mount="+d.String()+"&from=a", nil), http.StatusAccepted)
	tr.wantError(tr.do("HEAD", "/v2/b/blobs/"+d.String(), nil), 404, CodeBlobUnknown)
	tr.pushBlob("a", data)
	tr.wantStatus(tr.do("HEAD", p, nil), http.StatusOK)
	if resp := tr.do("GET", p, nil); resp.StatusCode != http.StatusOK || !bytes.Equal(resp.body, data) {
		t.Fatalf("GET after the blob was pushed again: %s, %d bytes", resp.Status, len(resp.body))
	}
}
