package benchclient

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Client speaks the few distribution API calls the benchmarks need.
type Client struct {
	base string
	hc   *http.Client
}

// NewClient returns a client of the registry at base (e.g.
// "http://127.0.0.1:5000") with a transport tuned for bulk transfer that
// keeps up to conns idle connections.
func NewClient(base string, conns int) *Client {
	tr := &http.Transport{
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
		WriteBufferSize:     256 << 10,
		ReadBufferSize:      256 << 10,
	}
	return &Client{base: base, hc: &http.Client{Transport: tr}}
}

// Base is the base URL the client was made with.
func (c *Client) Base() string { return c.base }

func (c *Client) do(method, u string, body io.Reader, size int64, hdr map[string]string, want int) (*http.Response, error) {
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.ContentLength = size
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != want {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return nil, fmt.Errorf("%s %s: status %d, want %d: %s", method, u, resp.StatusCode, want, bytes.TrimSpace(msg))
	}
	return resp, nil
}

// discard reads resp's body to the end and closes it, so the connection
// goes back to the pool.
func discard(resp *http.Response) (int64, error) {
	defer resp.Body.Close()
	return io.Copy(io.Discard, resp.Body)
}

// location resolves an upload's Location header against the server.
func (c *Client) location(resp *http.Response) (string, error) {
	loc := resp.Header.Get("Location")
	if loc == "" {
		return "", fmt.Errorf("%s %s: no Location", resp.Request.Method, resp.Request.URL)
	}
	base, err := url.Parse(c.base)
	if err != nil {
		return "", err
	}
	ref, err := url.Parse(loc)
	if err != nil {
		return "", err
	}
	return base.ResolveReference(ref).String(), nil
}

func withQuery(u, k, v string) string {
	sep := "?"
	if strings.Contains(u, "?") {
		sep = "&"
	}
	return u + sep + k + "=" + url.QueryEscape(v)
}

// PushMonolithic is POST /v2/<repo>/blobs/uploads/?digest= with the whole
// blob as the body.
func (c *Client) PushMonolithic(repo, digest string, size int64, body io.Reader) error {
	u := withQuery(c.base+"/v2/"+repo+"/blobs/uploads/", "digest", digest)
	resp, err := c.do(http.MethodPost, u, body, size, nil, http.StatusCreated)
	if err != nil {
		return err
	}
	_, err = discard(resp)
	return err
}

// startUpload is POST /v2/<repo>/blobs/uploads/ with no body: the
// session's location.
func (c *Client) startUpload(repo string) (string, error) {
	resp, err := c.do(http.MethodPost, c.base+"/v2/"+repo+"/blobs/uploads/", nil, 0, nil, http.StatusAccepted)
	if err != nil {
		return "", err
	}
	discard(resp)
	return c.location(resp)
}

// PushPostPut is POST /v2/<repo>/blobs/uploads/ with no body, then PUT
// ?digest= with the whole blob: the monolithic push every registry
// accepts (distribution answers a POST with a body 202 and drops it), and
// what containerd and Docker do.
func (c *Client) PushPostPut(repo, digest string, size int64, body io.Reader) error {
	loc, err := c.startUpload(repo)
	if err != nil {
		return err
	}
	resp, err := c.do(http.MethodPut, withQuery(loc, "digest", digest), body, size, nil, http.StatusCreated)
	if err != nil {
		return err
	}
	_, err = discard(resp)
	return err
}

// PushChunked is POST, then one PATCH per chunk with Content-Range, then
// PUT ?digest= with no body.
func (c *Client) PushChunked(repo, digest string, size, chunk int64, body io.Reader) error {
	loc, err := c.startUpload(repo)
	if err != nil {
		return err
	}
	for off := int64(0); off < size; off += chunk {
		n := min(chunk, size-off)
		hdr := map[string]string{"Content-Range": fmt.Sprintf("%d-%d", off, off+n-1)}
		resp, err := c.do(http.MethodPatch, loc, io.LimitReader(body, n), n, hdr, http.StatusAccepted)
		if err != nil {
			return err
		}
		discard(resp)
		if loc, err = c.location(resp); err != nil {
			return err
		}
	}
	resp, err := c.do(http.MethodPut, withQuery(loc, "digest", digest), nil, 0, nil, http.StatusCreated)
	if err != nil {
		return err
	}
	_, err = discard(resp)
	return err
}

// Get fetches u and reads the body into io.Discard; if size >= 0 it checks
// the length.
func (c *Client) Get(u string, hdr map[string]string, size int64) error {
	resp, err := c.do(http.MethodGet, u, nil, 0, hdr, http.StatusOK)
	if err != nil {
		return err
	}
	n, err := discard(resp)
	if err != nil {
		return err
	}
	if size >= 0 && n != size {
		return fmt.Errorf("GET %s: %d bytes, want %d", u, n, size)
	}
	return nil
}

// PutManifest is PUT /v2/<repo>/manifests/<ref> of m with the given media
// type; it wants 201 Created.
func (c *Client) PutManifest(repo, ref, mediaType string, m []byte) error {
	resp, err := c.do(http.MethodPut, c.base+"/v2/"+repo+"/manifests/"+ref, bytes.NewReader(m), int64(len(m)),
		map[string]string{"Content-Type": mediaType}, http.StatusCreated)
	if err != nil {
		return err
	}
	_, err = discard(resp)
	return err
}

// DeleteManifest is DELETE /v2/<repo>/manifests/<digest>; it wants 202
// Accepted.
func (c *Client) DeleteManifest(repo, digest string) error {
	resp, err := c.do(http.MethodDelete, c.base+"/v2/"+repo+"/manifests/"+digest, nil, 0, nil, http.StatusAccepted)
	if err != nil {
		return err
	}
	_, err = discard(resp)
	return err
}
