package s3

import (
	"bytes"
	"container/list"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/internal/backend"
)

// Linked blobs. A chunked upload's bytes are a multipart upload whose key
// S3 fixes when it starts, before the digest is known; copying the
// completed object to the blob key once verified cost seconds per GiB (a
// second write of every byte). Instead the session's upload completes into
// a data object of its own, and a small link object, written once the
// digest checked out, names it:
//
//	<prefix>data/<2 hex>/<id>               the bytes of session <id>
//	<prefix>data/<2 hex>/<id>.<alg>.<hex>   marker: <id> was verified as <alg>:<hex>
//	<prefix>links/<alg>/<2 hex>/<hex>       {"data": "<id>", "size": n}
//
// Writing the link is the moment the blob appears (one PutObject, atomic,
// conditional on no link being there: two sessions committing one digest
// leave exactly one). A blob is a plain object at its blob key (Put, a
// commit of less than a part) or a link and the data it names; reads try
// the blob key first, then the link.
//
// Data lives under data/, not under the session's uploads/<id>/, because
// it outlives the session: ending a session frees everything under
// uploads/<id>/ without asking whether a blob uses it.
//
// The marker is the way back from data to its link. A data object no link
// names (a crash between completing it and writing the link, or between
// deleting a link and its data) has to be found and freed by the GC's
// leftovers sweep, which lists data/ and must tell linked data from
// orphaned data without knowing the digests. The marker is written before
// the link and deleted only after the link is gone or names other data,
// so data with no marker was never linked; with one, the link it names
// says. It sorts right after its data object (ids have one length and '.'
// sorts before every hex digit), so one listing shows both.
//
// Nothing ever deletes data a link names: every deletion of data goes
// through releaseData, which reads the links its markers name first.

func (s *Store) dataKey(id string) string { return s.prefix + "data/" + id[:2] + "/" + id }

func (s *Store) markerKey(id string, d blobstore.Digest) string {
	return s.dataKey(id) + "." + string(d.Algorithm) + "." + d.Hex
}

func (s *Store) linkKey(d blobstore.Digest) string {
	return s.prefix + "links/" + string(d.Algorithm) + "/" + d.Hex[:2] + "/" + d.Hex
}

// link is what a link object holds.
type link struct {
	Data string `json:"data"` // the session id whose data object holds the bytes
	Size int64  `json:"size"`
}

// maxLinkSize bounds what a read of a link takes in: a link is tens of
// bytes, and anything larger at a link key is not one.
const maxLinkSize = 1 << 10

// readLink reads d's link from the bucket (never the cache).
// ErrNotFound when there is none.
func (s *Store) readLink(ctx context.Context, d blobstore.Digest) (link, error) {
	key := s.linkKey(d)
	out, err := s.client.GetObject(ctx, &awss3.GetObjectInput{Bucket: &s.bucket, Key: &key})
	if err != nil {
		return link{}, blobErr("read link of", d, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(io.LimitReader(out.Body, maxLinkSize+1))
	if err != nil {
		return link{}, fmt.Errorf("s3: read link of %s: %w", d, err)
	}
	var l link
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if len(b) > maxLinkSize || dec.Decode(&l) != nil || !backend.IsID(l.Data) || l.Size < 0 {
		// Not a link this store wrote: never build a key from it.
		return link{}, fmt.Errorf("s3: the link of %s at %s is not one", d, key)
	}
	return l, nil
}

// putLink writes d's link to l, if no link is there (ifAbsent) or
// whatever is there. It reports false, nil when ifAbsent and a link is
// there. A server that does not do conditional writes (501) gets an
// unconditional one: the caller reads the link back in any case.
func (s *Store) putLink(ctx context.Context, d blobstore.Digest, l link, ifAbsent bool) (bool, error) {
	b, err := json.Marshal(l)
	if err != nil {
		return false, err
	}
	key := s.linkKey(d)
	in := &awss3.PutObjectInput{
		Bucket: &s.bucket, Key: &key, Body: bytes.NewReader(b), ContentLength: aws.Int64(int64(len(b))),
		ContentType: aws.String("application/json"),
	}
	if ifAbsent {
		in.IfNoneMatch = aws.String("*")
	}
	_, err = s.client.PutObject(ctx, in)
	switch st := statusOf(err); {
	case err == nil:
		return true, nil
	case ifAbsent && (st == http.StatusPreconditionFailed || st == http.StatusConflict):
		// 409: AWS's answer to a conditional write racing another.
		return false, nil
	case ifAbsent && st == http.StatusNotImplemented:
		in.IfNoneMatch = nil
		in.Body = bytes.NewReader(b)
		_, err = s.client.PutObject(ctx, in)
	}
	if err != nil {
		return false, err
	}
	return true, nil
}

// linkData makes session id's data object, verified as d, blob d: the
// marker first, then the link, unless d's link already names data that
// is there. It reports whether id's data is now the blob's (false: the
// blob was there, and id's data may go).
func (s *Store) linkData(ctx context.Context, d blobstore.Digest, id string, size int64) (bool, error) {
	if err := s.putObject(ctx, s.markerKey(id, d), nil); err != nil {
		return false, err
	}
	mine := link{Data: id, Size: size}
	ifAbsent := true
	for range 4 {
		wrote, err := s.putLink(ctx, d, mine, ifAbsent)
		if err != nil {
			return false, err
		}
		// Read back even after a write that succeeded: a server that
		// ignores If-None-Match lets the last writer win, and only the
		// link as it stands says who that is.
		have, err := s.readLink(ctx, d)
		switch {
		case errors.Is(err, blobstore.ErrNotFound):
			ifAbsent = true // deleted in between: try again
			continue
		case err != nil:
			return false, err
		case have.Data == id:
			s.links.put(d, have)
			return true, nil
		case wrote:
			return false, nil // overwritten by another commit since
		}
		// Another's link: it wins if its data is there. One whose data
		// is gone (deleted from under it) is replaced.
		if n, err := s.head(ctx, s.dataKey(have.Data)); err == nil && n == have.Size {
			return false, nil
		} else if err != nil && statusOf(err) != http.StatusNotFound {
			return false, err
		}
		ifAbsent = false
	}
	return false, fmt.Errorf("s3: link %s: the link kept changing", d)
}

// releaseData deletes session id's data object and its markers, unless a
// link names it: every marker's link is read (from the bucket) first.
// The markers go before the data, so a crash in between leaves data with
// no marker, which the sweep knows was never (or is no longer) linked.
func (s *Store) releaseData(ctx context.Context, id string) error {
	prefix := s.dataKey(id)
	var keys []string
	pages := awss3.NewListObjectsV2Paginator(s.client, &awss3.ListObjectsV2Input{Bucket: &s.bucket, Prefix: &prefix})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return err
		}
		for _, o := range page.Contents {
			keys = append(keys, aws.ToString(o.Key))
		}
	}
	var markers []string
	hasData := false
	for _, k := range keys {
		if k == prefix {
			hasData = true
			continue
		}
		d, ok := s.markerDigest(id, k)
		if !ok {
			continue // not one of ours: left alone
		}
		named, err := s.names(ctx, d, id)
		if err != nil {
			return err
		}
		if named {
			return nil
		}
		markers = append(markers, k)
	}
	for _, k := range markers {
		if err := s.deleteObject(ctx, k); err != nil {
			return err
		}
	}
	if hasData {
		return s.deleteObject(ctx, prefix)
	}
	return nil
}

// names reports whether d's link, read from the bucket, names session
// id's data.
func (s *Store) names(ctx context.Context, d blobstore.Digest, id string) (bool, error) {
	l, err := s.readLink(ctx, d)
	if errors.Is(err, blobstore.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return l.Data == id, nil
}

// markerDigest is the digest of key, if it is a marker of session id.
func (s *Store) markerDigest(id, key string) (blobstore.Digest, bool) {
	rest, ok := strings.CutPrefix(key, s.dataKey(id)+".")
	if !ok {
		return blobstore.Digest{}, false
	}
	alg, hex, ok := strings.Cut(rest, ".")
	if !ok {
		return blobstore.Digest{}, false
	}
	d := blobstore.Digest{Algorithm: blobstore.Algorithm(alg), Hex: hex}
	return d, d.Validate() == nil
}

func (s *Store) deleteObject(ctx context.Context, key string) error {
	if t, ok := blobstore.NotAfter(ctx); ok {
		return s.deleteObjectBy(ctx, key, t)
	}
	_, err := s.client.DeleteObject(ctx, &awss3.DeleteObjectInput{Bucket: &s.bucket, Key: &key})
	if err != nil && statusOf(err) != http.StatusNotFound {
		return err
	}
	return nil
}

// errTooLate: a delete fenced by a time (blobstore.WithNotAfter) that is
// less than a second away, or that the server refused as expired.
var errTooLate = errors.New("s3: delete refused: its time has passed")

// deleteObjectBy deletes key through a request presigned to expire at t
// (whole seconds, rounded down): the server refuses it once t is past on
// its clock, however late this process sends it.
func (s *Store) deleteObjectBy(ctx context.Context, key string, t time.Time) error {
	expires := time.Until(t).Truncate(time.Second)
	if expires < time.Second {
		return errTooLate
	}
	req, err := awss3.NewPresignClient(s.client).PresignDeleteObject(ctx,
		&awss3.DeleteObjectInput{Bucket: &s.bucket, Key: &key}, awss3.WithPresignExpires(expires))
	if err != nil {
		return err
	}
	// Sent past the SDK (its retries and stall watch): a hung server
	// fails it within stallTimeout, and the next GC pass tries again.
	ctx, cancel := context.WithTimeout(ctx, stallTimeout.get())
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, req.Method, req.URL, nil)
	if err != nil {
		return err
	}
	for k, vs := range req.SignedHeader {
		if !strings.EqualFold(k, "host") {
			hr.Header[k] = vs
		}
	}
	if s.beforeSend != nil {
		s.beforeSend()
	}
	resp, err := s.client.Options().HTTPClient.Do(hr)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	switch {
	case resp.StatusCode < 300 || resp.StatusCode == http.StatusNotFound:
		return nil
	case resp.StatusCode == http.StatusForbidden && bytes.Contains(body, []byte("xpired")):
		return fmt.Errorf("%w (%s)", errTooLate, bytes.TrimSpace(body))
	default:
		return fmt.Errorf("s3: delete %s: %s %s", key, resp.Status, bytes.TrimSpace(body))
	}
}

// location is where a blob's bytes are: its blob key, or the data object
// its link names.
type location struct {
	key  string
	size int64
}

// locate finds d: a HEAD of its blob key, else its link and a HEAD of the
// data it names. ErrNotFound if neither, or if the link names data that
// is gone.
func (s *Store) locate(ctx context.Context, d blobstore.Digest) (location, error) {
	key := s.blobKey(d)
	size, err := s.head(ctx, key)
	if err == nil {
		return location{key: key, size: size}, nil
	}
	if statusOf(err) != http.StatusNotFound {
		return location{}, blobErr("stat", d, err)
	}
	var loc location
	err = s.viaLink(ctx, d, func(l link) error {
		key := s.dataKey(l.Data)
		n, err := s.head(ctx, key)
		// Data of another length than its link says was cut behind the
		// store's back: reported with the length it has, as a plain
		// object's is, so a caller with a record sees it is not the blob
		// (and a commit of the blob replaces the link).
		loc = location{key: key, size: n}
		return err
	})
	return loc, err
}

// viaLink runs op on d's link: the cached one first, and if the data it
// names is gone (op fails with a 404), the link read again, since a
// Delete and a new push may have moved it. ErrNotFound when there is no
// link or its data is gone.
func (s *Store) viaLink(ctx context.Context, d blobstore.Digest, op func(link) error) error {
	if l, ok := s.links.get(d); ok {
		err := op(l)
		if statusOf(err) != http.StatusNotFound {
			return wrapLinked(d, err)
		}
		s.links.drop(d)
	}
	l, err := s.readLink(ctx, d)
	if err != nil {
		return err
	}
	if err := op(l); err != nil {
		return wrapLinked(d, err)
	}
	s.links.put(d, l)
	return nil
}

// wrapLinked turns an error from reading linked data into the
// contract's: its data gone is the blob gone.
func wrapLinked(d blobstore.Digest, err error) error {
	if err == nil || errors.Is(err, blobstore.ErrRange) {
		return err
	}
	return blobErr("read", d, err)
}

// linkCache remembers resolved links, bounded, least recently used out.
// Links never change in place; a cached one can only go stale by a
// Delete and a new push of the digest, which moves it to other data, and
// every read through the cache notices the data gone and reads the link
// again (viaLink).
type linkCache struct {
	mu    sync.Mutex
	max   int
	order *list.List // of cachedLink, most recent first
	byKey map[blobstore.Digest]*list.Element
}

type cachedLink struct {
	d blobstore.Digest
	l link
}

// linkCacheSize bounds the cache: about 150 bytes an entry.
const linkCacheSize = 1 << 16

func newLinkCache(max int) *linkCache {
	return &linkCache{max: max, order: list.New(), byKey: make(map[blobstore.Digest]*list.Element)}
}

func (c *linkCache) get(d blobstore.Digest) (link, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byKey[d]
	if !ok {
		return link{}, false
	}
	c.order.MoveToFront(e)
	return e.Value.(cachedLink).l, true
}

func (c *linkCache) put(d blobstore.Digest, l link) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byKey[d]; ok {
		e.Value = cachedLink{d, l}
		c.order.MoveToFront(e)
		return
	}
	c.byKey[d] = c.order.PushFront(cachedLink{d, l})
	if c.order.Len() > c.max {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.byKey, last.Value.(cachedLink).d)
	}
}

func (c *linkCache) drop(d blobstore.Digest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byKey[d]; ok {
		c.order.Remove(e)
		delete(c.byKey, d)
	}
}
