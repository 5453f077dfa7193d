package main

// The apparatus: a deterministic blob stream, the limits, and a client that
// speaks just enough of the distribution API. bench/ has its own copy (it
// is test-only and cannot be imported); keep the two alike.

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const mib = 1 << 20

// parseSize reads "1073741824", "1GiB", "64MiB", "512KiB", "1G", "64M".
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size %q: want a positive number of bytes, optionally with KiB, MiB or GiB", s)
	}
	return n * mult, nil
}

// blob is a deterministic stream of size pseudo-random bytes that costs
// about a memcpy to produce, so the apparatus stays out of the figures: a
// 1 MiB block of splitmix64 output made from the seed, repeated, with the
// first 8 bytes of every block replaced by a hash of (seed, block index)
// so no two blocks are alike. The stream does not depend on how callers
// size their reads, and no blob is ever held in memory.
type blob struct {
	seed  uint64
	off   int64
	size  int64
	block []byte
}

const blockSize = 1 << 20

func newBlob(seed uint64, size int64) *blob {
	block := make([]byte, blockSize)
	for j := range uint64(blockSize / 8) {
		binary.LittleEndian.PutUint64(block[j*8:], mix(seed, j))
	}
	return &blob{seed: seed, size: size, block: block}
}

func mix(seed, j uint64) uint64 {
	z := seed + (j+1)*0x9e3779b97f4a7c15
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

func (r *blob) Read(p []byte) (int, error) {
	if r.off >= r.size {
		return 0, io.EOF
	}
	if rest := r.size - r.off; int64(len(p)) > rest {
		p = p[:rest]
	}
	for n := 0; n < len(p); {
		bi, in := r.off/blockSize, int(r.off%blockSize)
		c := copy(p[n:], r.block[in:])
		if in < 8 {
			var stamp [8]byte
			binary.LittleEndian.PutUint64(stamp[:], mix(^r.seed, uint64(bi)))
			copy(p[n:n+min(c, 8-in)], stamp[in:])
		}
		n += c
		r.off += int64(c)
	}
	return len(p), nil
}

// limitPush is sha256 + write + fsync of the blob's bytes into a new file
// in dir (1 MiB copy buffer, as the store). It keeps the file and returns
// its path, the digest and the time taken.
//
// Page recycling: on a virtual machine, writing a file into pages the guest
// has not touched lately costs several times more than writing into pages
// freed a moment ago (the host backs guest memory lazily and takes free
// pages back after a few seconds). Whichever of push and limit ran second
// would win by that alone, so both always write into just-freed pages: a
// warm-up limit run frees the pages for the first limit, each limit file is
// removed right before its push, and each pushed blob is dropped from the
// page cache (fadvise) right before the next limit.
func limitPush(dir string, seed uint64, size int64) (path, digest string, took time.Duration, err error) {
	buf := make([]byte, mib)
	start := time.Now()
	f, err := os.CreateTemp(dir, "limit-push-*")
	if err != nil {
		return "", "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(io.MultiWriter(f, h), newBlob(seed, size), buf); err != nil {
		return "", "", 0, err
	}
	if err := f.Sync(); err != nil {
		return "", "", 0, err
	}
	took = time.Since(start)
	return f.Name(), "sha256:" + hex.EncodeToString(h.Sum(nil)), took, nil
}

type client struct {
	base string
	hc   *http.Client
}

func newClient(base string, conns int) *client {
	tr := &http.Transport{
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
		WriteBufferSize:     256 << 10,
		ReadBufferSize:      256 << 10,
	}
	return &client{base: base, hc: &http.Client{Transport: tr}}
}

func (c *client) do(method, u string, body io.Reader, size int64, hdr map[string]string, want int) (*http.Response, error) {
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

func discard(resp *http.Response) (int64, error) {
	defer resp.Body.Close()
	return io.Copy(io.Discard, resp.Body)
}

func (c *client) location(resp *http.Response) (string, error) {
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

func (c *client) pushMonolithic(repo, digest string, size int64, body io.Reader) error {
	u := withQuery(c.base+"/v2/"+repo+"/blobs/uploads/", "digest", digest)
	resp, err := c.do(http.MethodPost, u, body, size, nil, http.StatusCreated)
	if err != nil {
		return err
	}
	_, err = discard(resp)
	return err
}

func (c *client) pushChunked(repo, digest string, size, chunk int64, body io.Reader) error {
	resp, err := c.do(http.MethodPost, c.base+"/v2/"+repo+"/blobs/uploads/", nil, 0, nil, http.StatusAccepted)
	if err != nil {
		return err
	}
	discard(resp)
	loc, err := c.location(resp)
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
	resp, err = c.do(http.MethodPut, withQuery(loc, "digest", digest), nil, 0, nil, http.StatusCreated)
	if err != nil {
		return err
	}
	_, err = discard(resp)
	return err
}

func (c *client) get(u string, hdr map[string]string, size int64) error {
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

func (c *client) putManifest(repo, ref, mediaType string, m []byte) error {
	req, err := http.NewRequest(http.MethodPut, c.base+"/v2/"+repo+"/manifests/"+ref, bytes.NewReader(m))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", mediaType)
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("PUT manifest %s:%s: status %d: %s", repo, ref, resp.StatusCode, bytes.TrimSpace(msg))
	}
	_, err = io.Copy(io.Discard, resp.Body)
	return err
}

// runConcurrent calls fn(0..n-1) from workers goroutines and returns the
// wall time.
func runConcurrent(n, workers int, fn func(i int) error) (time.Duration, error) {
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				if err := fn(int(i)); err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	return time.Since(start), firstErr
}
