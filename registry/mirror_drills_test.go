package registry

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// gzipped is b compressed with gzip.
func gzipped(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestMirrorBlobContentEncoding: a blob is the bytes its digest names.
// Upstream (or a CDN before it) may label a layer, which is gzip data
// itself, with Content-Encoding: gzip; the mirror must not decode it into
// other bytes, and must never keep or serve bytes that are not the blob.
func TestMirrorBlobContentEncoding(t *testing.T) {
	layer := gzipped(t, bytes.Repeat([]byte("a tar of a layer "), 4096))
	env, _ := newHostileEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Encoding", "gzip")
		_, _ = w.Write(layer)
	}))
	path := "/v2/library/app/blobs/" + digestOf(layer)
	for i := range 2 {
		resp := env.do(http.MethodGet, path, nil)
		env.wantStatus(resp, http.StatusOK)
		if !bytes.Equal(resp.body, layer) {
			t.Fatalf("GET %d: %d bytes, not the layer's %d", i, len(resp.body), len(layer))
		}
	}

	// An upstream that compresses a blob although asked for identity
	// sends bytes that are not the blob: refused, nothing kept.
	plain := bytes.Repeat([]byte("an uncompressed blob "), 4096)
	env, _ = newHostileEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Accept-Encoding") != "identity" {
			t.Errorf("upstream asked with Accept-Encoding %q, want identity", r.Header.Get("Accept-Encoding"))
		}
		w.Header().Set("Content-Encoding", "gzip")
		_, _ = w.Write(gzipped(t, plain))
	}))
	path = "/v2/library/app/blobs/" + digestOf(plain)
	for i := range 2 {
		// A streamed blob that fails its digest ends in a cut connection;
		// one found bad before its first byte is a 502.
		resp, err := env.srv.Client().Get(env.srv.URL + path)
		if err != nil {
			continue
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil && resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("GET %d of a blob upstream compressed: %s, %d bytes", i, resp.Status, len(b))
		}
	}
}

// TestMirrorUpstreamClosesMidHeader: an upstream that closes the
// connection in the middle of its status line or headers is a prompt
// 502, with nothing kept.
func TestMirrorUpstreamClosesMidHeader(t *testing.T) {
	for _, partial := range []string{"HTTP/1.1 2", "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Le"} {
		t.Run(strings.Fields(partial)[1], func(t *testing.T) {
			env, _ := newHostileEnv(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				conn, _, err := http.NewResponseController(w).Hijack()
				if err != nil {
					return
				}
				_, _ = conn.Write([]byte(partial))
				conn.Close()
			}), func(c *MirrorConfig) { c.UpstreamTimeout = 5 * time.Second })
			start := time.Now()
			env.wantError(env.do(http.MethodGet, "/v2/library/app/manifests/v1", nil), http.StatusBadGateway, CodeUnknown)
			env.wantError(env.do(http.MethodGet, "/v2/library/app/blobs/"+digestOf([]byte("x")), nil), http.StatusBadGateway, CodeUnknown)
			if d := time.Since(start); d > 4*time.Second {
				t.Fatalf("answers took %s", d)
			}
		})
	}
}

// TestMirrorTokenServiceStalls: a token service that accepts the
// connection and never answers costs a pull the upstream timeout, then a
// 504, not a hang.
func TestMirrorTokenServiceStalls(t *testing.T) {
	stalled, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	go func() {
		for {
			c, err := stalled.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	env, _ := newHostileEnv(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="http://`+stalled.Addr().String()+`/token",service="x"`)
		w.WriteHeader(http.StatusUnauthorized)
	}), func(c *MirrorConfig) { c.UpstreamTimeout = time.Second })
	done := make(chan response, 1)
	go func() { done <- env.do(http.MethodGet, "/v2/library/app/manifests/v1", nil) }()
	select {
	case resp := <-done:
		if resp.StatusCode != http.StatusGatewayTimeout && resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("pull behind a stalled token service: %d %s", resp.StatusCode, resp.body)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("pull behind a stalled token service still waits after 30 s")
	}
}

// TestMirrorBodyLongerThanLength: an upstream that sends more bytes than
// its Content-Length (on a kept-alive connection) gets the blob it
// declared taken, and the extra bytes do not become the start of the next
// answer on that connection.
func TestMirrorBodyLongerThanLength(t *testing.T) {
	one, two := []byte("the first blob"), []byte("the second blob")
	env, _ := newHostileEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := one
		if strings.HasSuffix(r.URL.Path, digestOf(two)) {
			body = two
		}
		conn, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintf(buf, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n%sHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nevil!", len(body), body)
		_ = buf.Flush()
		time.Sleep(200 * time.Millisecond)
	}))
	for _, b := range [][]byte{one, two} {
		resp := env.do(http.MethodGet, "/v2/library/app/blobs/"+digestOf(b), nil)
		env.wantStatus(resp, http.StatusOK)
		if !bytes.Equal(resp.body, b) {
			t.Fatalf("blob %q, want %q", resp.body, b)
		}
	}
}

// TestMirrorIndexChildGone: an index whose child manifest upstream no
// longer has is served; the child is a 404 MANIFEST_UNKNOWN, not a 5xx.
func TestMirrorIndexChildGone(t *testing.T) {
	child := "sha256:" + strings.Repeat("e", 64)
	index := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + child + `","size":100,"platform":{"architecture":"amd64","os":"linux"}}]}`)
	env, _ := newHostileEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/manifests/v1") {
			manifestAnswer{contentType: MediaTypeOCIIndex, body: index, digest: digestOf(index)}.serve(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"errors":[{"code":"MANIFEST_UNKNOWN","message":"gone"}]}`))
	}))
	env.wantStatus(env.do(http.MethodGet, "/v2/library/app/manifests/v1", nil, "Accept", MediaTypeOCIIndex), http.StatusOK)
	env.wantError(env.do(http.MethodGet, "/v2/library/app/manifests/"+child, nil), http.StatusNotFound, CodeManifestUnknown)
	env.wantStatus(env.do(http.MethodGet, "/v2/library/app/manifests/v1", nil, "Accept", MediaTypeOCIIndex), http.StatusOK)
}

// TestMirrorSlowReaderDoesNotHoldFill: a client that stops reading a cold
// blob does not hold back the fill, nor another client reading the same
// blob at full speed.
func TestMirrorSlowReaderDoesNotHoldFill(t *testing.T) {
	blob := bytes.Repeat([]byte("0123456789abcdef"), 2<<20) // 32 MiB: more than socket buffers hold
	env, _ := newHostileEnv(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
		_, _ = w.Write(blob)
	}))
	path := "/v2/library/app/blobs/" + digestOf(blob)
	slow, err := env.srv.Client().Get(env.srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Body.Close()
	buf := make([]byte, 1024)
	if _, err := io.ReadFull(slow.Body, buf); err != nil { // started, then stalls
		t.Fatal(err)
	}
	done := make(chan response, 1)
	go func() { done <- env.do(http.MethodGet, path, nil) }()
	select {
	case resp := <-done:
		env.wantStatus(resp, http.StatusOK)
		if !bytes.Equal(resp.body, blob) {
			t.Fatalf("the fast reader got %d bytes, not the blob", len(resp.body))
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the fast reader waits behind the one that stopped reading")
	}
}

// TestMirrorRangeAnswers: upstream's answer to a range need not be the
// range asked for. A client's Range on a cold blob gets exactly its bytes
// whether upstream honours the range (206) or ignores it (200, whole
// blob); an upstream that answers a plain GET with 206 and part of the
// blob never has that part stored or served as the blob.
func TestMirrorRangeAnswers(t *testing.T) {
	blob := bytes.Repeat([]byte("0123456789"), 100000)
	path := "/v2/library/app/blobs/" + digestOf(blob)
	for _, mode := range []string{"honours", "ignores"} {
		t.Run("upstream "+mode+" Range", func(t *testing.T) {
			env, _ := newHostileEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if mode == "ignores" {
					w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
					_, _ = w.Write(blob)
					return
				}
				http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(blob))
			}))
			resp := env.do(http.MethodGet, path, nil, "Range", "bytes=10-19")
			if resp.StatusCode == http.StatusOK {
				if !bytes.Equal(resp.body, blob) {
					t.Fatalf("200 with %d bytes that are not the blob", len(resp.body))
				}
				return
			}
			env.wantStatus(resp, http.StatusPartialContent)
			if !bytes.Equal(resp.body, blob[10:20]) {
				t.Fatalf("206 with %q, want %q", resp.body, blob[10:20])
			}
			resp = env.do(http.MethodGet, path, nil)
			env.wantStatus(resp, http.StatusOK)
			if !bytes.Equal(resp.body, blob) {
				t.Fatalf("the whole blob after a range: %d bytes, not the blob", len(resp.body))
			}
		})
	}
	t.Run("upstream answers a plain GET with 206", func(t *testing.T) {
		env, _ := newHostileEnv(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-99/%d", len(blob)))
			w.Header().Set("Content-Length", "100")
			w.WriteHeader(http.StatusPartialContent)
			_, _ = w.Write(blob[:100])
		}))
		for i := range 2 {
			resp, err := env.srv.Client().Get(env.srv.URL + path)
			if err != nil {
				continue
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode < 300 {
				t.Fatalf("GET %d: %s with %d bytes from a partial upstream answer", i, resp.Status, len(b))
			}
		}
	})
}

// TestMirrorTagListNamesChecked: tag names in upstream's list are hostile
// like any other name: those that are not valid tags are left out of the
// list passed to the client (as sync leaves them out).
func TestMirrorTagListNamesChecked(t *testing.T) {
	env, _ := newHostileEnv(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"name":"library/app","tags":["v1","../../etc/passwd","<script>x</script>","` + strings.Repeat("a", 200) + `","v2"]}`))
	}))
	resp := env.do(http.MethodGet, "/v2/library/app/tags/list", nil)
	env.wantStatus(resp, http.StatusOK)
	var list tagList
	if err := json.Unmarshal(resp.body, &list); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(list.Tags, []string{"v1", "v2"}) {
		t.Fatalf("tags %q, want only the valid v1 and v2", list.Tags)
	}
}

// invalidNamePages is an upstream whose tag list of library/app, paged
// by last, has pages of only invalid names, one with CR LF in a name, and
// names too long to be a cursor (a page after one is served too, for
// sync, which follows upstream's own Link), with the valid tags a..e
// among them.
func invalidNamePages(t *testing.T) http.Handler {
	long := strings.Repeat("x", 2*maxTagCursor)
	pages := map[string]struct {
		tags []string
		next string // upstream's Link: rel="next" carries last=next; "" for none
	}{
		"":                     {[]string{"a", "b"}, "b"},
		"b":                    {[]string{"../../etc/passwd", "<x>\r\nSet-Cookie: y"}, "<x>\r\nSet-Cookie: y"},
		"<x>\r\nSet-Cookie: y": {[]string{"-bad", ".bad"}, ".bad"},
		".bad":                 {[]string{"c", long}, long},
		"c":                    {[]string{long, "d"}, "d"},
		long:                   {[]string{"d"}, "d"},
		"d":                    {[]string{"e"}, ""},
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		last := r.URL.Query().Get("last")
		p, ok := pages[last]
		if !ok || r.URL.Path != "/v2/library/app/tags/list" {
			t.Errorf("upstream asked for %s after %q", r.URL.Path, last)
			http.NotFound(w, r)
			return
		}
		if p.next != "" {
			w.Header().Set("Link", "</v2/library/app/tags/list?"+url.Values{"n": {"2"}, "last": {p.next}}.Encode()+`>; rel="next"`)
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(tagList{Name: "library/app", Tags: p.tags})
	})
}

// TestMirrorTagListPagesOfInvalidNames: when a page of upstream's tag
// list holds only names that are not tags, the client still gets a Link
// to the next page, which starts after upstream's last entry: the listing
// goes on to the valid tags behind them. Before, that page came back
// empty without a Link, and the listing ended there. An entry too long to
// travel in a URL is no place to continue from; the last valid tag is.
func TestMirrorTagListPagesOfInvalidNames(t *testing.T) {
	env, _ := newHostileEnv(t, invalidNamePages(t))
	var got []string
	path := "/v2/library/app/tags/list?n=2"
	for range 10 {
		resp := env.do(http.MethodGet, path, nil)
		env.wantStatus(resp, http.StatusOK)
		var list tagList
		if err := json.Unmarshal(resp.body, &list); err != nil {
			t.Fatal(err)
		}
		got = append(got, list.Tags...)
		link := resp.Header.Get("Link")
		if link == "" {
			break
		}
		if strings.ContainsAny(link, "\r\n") || len(link) > 4*maxTagCursor {
			t.Fatalf("Link %q", link)
		}
		path = strings.TrimSuffix(strings.TrimPrefix(link, "<"), `>; rel="next"`)
	}
	if want := []string{"a", "b", "c", "d", "e"}; !slices.Equal(got, want) {
		t.Fatalf("tags over every page %q, want %q", got, want)
	}
}

// TestSyncTagListPagesOfInvalidNames: sync reads upstream's tag list
// on past a page that holds only names that are not tags. Before, such a
// page counted as "nothing new", which ends a listing (as a registry
// that answers the first page again does), and the tags behind it were
// never synced.
func TestSyncTagListPagesOfInvalidNames(t *testing.T) {
	env, _ := newHostileEnv(t, invalidNamePages(t))
	got, err := env.h.SyncSource(env.mirror).Tags(context.Background(), "library/app")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"a", "b", "c", "d", "e"}; !slices.Equal(got, want) {
		t.Fatalf("sync listed %q, want %q", got, want)
	}
}

// TestMirrorTokenFetchOutlivesFirstClient: pulls that wait for one token
// request share it; the client whose pull started it going away must not
// fail the others.
func TestMirrorTokenFetchOutlivesFirstClient(t *testing.T) {
	var tokenURL string
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			time.Sleep(600 * time.Millisecond)
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"token":"t0k"}`))
			return
		}
		if r.Header.Get("Authorization") != "Bearer t0k" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+tokenURL+`",service="up"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		manifestAnswer{contentType: MediaTypeOCIManifest, body: goodManifest, digest: digestOf(goodManifest)}.serve(w, r)
	})
	env, srv := newHostileEnv(t, up)
	tokenURL = srv.URL + "/token"

	first, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(first, http.MethodGet, env.srv.URL+"/v2/library/app/manifests/v1", nil)
	go func() {
		if resp, err := env.srv.Client().Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	time.Sleep(50 * time.Millisecond) // the first pull's token request is under way
	resp := env.do(http.MethodGet, "/v2/library/app/manifests/"+digestOf(goodManifest), nil)
	env.wantStatus(resp, http.StatusOK)
}

// TestMirrorBlobTooManyRequests: a cold blob behind upstream's 429 gets
// TOOMANYREQUESTS with upstream's Retry-After bounded, like a manifest.
func TestMirrorBlobTooManyRequests(t *testing.T) {
	env, _ := newHostileEnv(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Retry-After", "99999999999999999999")
		w.WriteHeader(http.StatusTooManyRequests)
	}), func(c *MirrorConfig) { c.UpstreamTimeout = 2 * time.Second })
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		resp := env.do(method, "/v2/library/app/blobs/"+digestOf([]byte("cold")), nil)
		if resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("%s: %d %s, want 429", method, resp.StatusCode, resp.body)
		}
		if ra := resp.Header.Get("Retry-After"); ra != "" {
			if n, err := strconv.Atoi(ra); err != nil || n < 0 || n > 3600 {
				t.Fatalf("%s: Retry-After %q, want at most 3600 seconds", method, ra)
			}
		}
	}
}

// TestMirrorLongTagListPaged: upstream decides how long its tag list is,
// and a few clients at once must not make the mirror hold it whole (a
// list of short names costs several times its size decoded). A list
// longer than one page is passed on as pages: the client follows the
// Link, the mirror asks upstream for the tags after the last it passed,
// and every tag arrives exactly once. An endless list is a first page,
// not a 502.
func TestMirrorLongTagListPaged(t *testing.T) {
	const n = 400_000 // twice what one page holds of names this long
	all := make([]string, n)
	for i := range all {
		all[i] = fmt.Sprintf("t%07d", i)
	}
	env, _ := newHostileEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("last") == "endless" || strings.Contains(r.URL.Path, "/endless/") {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"name":"library/endless","tags":["a"`)
			chunk := strings.Repeat(`,"a"`, 64<<10)
			for r.Context().Err() == nil {
				if _, err := io.WriteString(w, chunk); err != nil {
					return
				}
			}
			return
		}
		last := r.URL.Query().Get("last")
		i, _ := slices.BinarySearch(all, last)
		if i < n && all[i] == last {
			i++
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"name": "library/app", "tags": all[i:]})
	}))
	var got []string
	next := "/v2/library/app/tags/list"
	pages := 0
	for next != "" {
		resp := env.do(http.MethodGet, next, nil)
		env.wantStatus(resp, http.StatusOK)
		var list tagList
		if err := json.Unmarshal(resp.body, &list); err != nil {
			t.Fatal(err)
		}
		got = append(got, list.Tags...)
		pages++
		next = ""
		if l := resp.Header.Get("Link"); l != "" {
			next = strings.TrimSuffix(strings.TrimPrefix(l, "<"), `>; rel="next"`)
		}
		if pages > 10 {
			t.Fatal("more than 10 pages")
		}
	}
	if pages < 2 || !slices.Equal(got, all) {
		t.Fatalf("%d tags in %d pages, want the %d in order in more than one page", len(got), pages, n)
	}

	resp := env.do(http.MethodGet, "/v2/library/endless/tags/list", nil)
	env.wantStatus(resp, http.StatusOK)
	if resp.Header.Get("Link") == "" {
		t.Error("an endless list's first page has no Link")
	}
}
