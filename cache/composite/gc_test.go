package composite

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore"
)

// clock is a time every replica of a test shares and the test moves.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func push(t *testing.T, s *Store, repo string, data []byte) cache.Digest {
	t.Helper()
	d := cache.FromBytes(cache.SHA256, data)
	if _, err := s.PutBlob(ctx(t), d, int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if repo != "" {
		if err := s.LinkBlob(ctx(t), repo, d); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// imageManifest is an OCI image manifest naming config and layers.
func imageManifest(t *testing.T, config cache.Digest, layers ...cache.Digest) (cache.Manifest, []byte) {
	t.Helper()
	type desc struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int64  `json:"size"`
	}
	m := struct {
		SchemaVersion int    `json:"schemaVersion"`
		MediaType     string `json:"mediaType"`
		Config        desc   `json:"config"`
		Layers        []desc `json:"layers"`
	}{2, "application/vnd.oci.image.manifest.v1+json", desc{"application/vnd.oci.image.config.v1+json", config.String(), 1}, nil}
	for _, l := range layers {
		m.Layers = append(m.Layers, desc{"application/vnd.oci.image.layer.v1.tar", l.String(), 1})
	}
	body, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return cache.Manifest{Digest: cache.FromBytes(cache.SHA256, body), MediaType: m.MediaType}, body
}

func TestGC(t *testing.T) {
	each(t, func(t *testing.T, replica replicas) {
		c := &clock{t: time.Now()}
		a, b := replica(), replica()
		a.now, b.now = c.now, c.now

		config := push(t, a, "team/app", []byte(`{"config":1}`))
		layer := push(t, a, "team/app", randomBytes(70000))
		stray := push(t, a, "team/app", randomBytes(1000)) // linked, referenced by nothing
		orphan := push(t, a, "", randomBytes(2000))        // never linked
		m, body := imageManifest(t, config, layer)
		if err := b.PutManifest(ctx(t), "team/app", m, body, []string{"v1"}); err != nil {
			t.Fatal(err)
		}
		u, err := a.OpenUpload(ctx(t), "team/app", "")
		if err != nil {
			t.Fatal(err)
		}

		// Inside the grace period nothing goes.
		st, err := a.GC(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if st.LinksRemoved+st.BlobsRemoved+st.UploadsExpired != 0 {
			t.Fatalf("GC inside the grace period removed %+v", st)
		}

		c.add(25 * time.Hour) // past the grace period and the upload TTL
		// Another replica holding the GC lease: this one does nothing.
		l, ok, err := b.leases.Acquire(ctx(t), "gc", time.Minute)
		if err != nil || !ok {
			t.Fatalf("taking the GC lease: %v, %v", ok, err)
		}
		if _, err := a.GC(ctx(t)); !errors.Is(err, ErrGCElsewhere) {
			t.Fatalf("GC while another replica collects: %v", err)
		}
		_ = l.Release(ctx(t))

		st, err = a.GC(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if st.LinksRemoved != 1 || st.BlobsRemoved != 2 || st.BytesRemoved != 3000 || st.UploadsExpired != 1 {
			t.Errorf("GC: %+v, want 1 link (stray), 2 blobs of 3000 bytes (stray, orphan), 1 upload", st)
		}
		for _, d := range []cache.Digest{stray, orphan} {
			if _, err := b.StatBlob(ctx(t), d); !errors.Is(err, cache.ErrBlobUnknown) {
				t.Errorf("collected blob %s: StatBlob %v", d, err)
			}
			if _, err := b.blobs.Stat(ctx(t), d); !errors.Is(err, blobstore.ErrNotFound) {
				t.Errorf("collected blob %s: bytes still stored (%v)", d, err)
			}
		}
		for _, d := range []cache.Digest{config, layer} {
			if _, err := b.HasBlob(ctx(t), "team/app", d); err != nil {
				t.Errorf("referenced blob %s: %v", d, err)
			}
		}
		if _, got, err := b.GetManifest(ctx(t), "team/app", m.Digest); err != nil || !bytes.Equal(got, body) {
			t.Errorf("manifest after GC: %v", err)
		}
		if _, err := b.GetUpload(ctx(t), "team/app", u.ID); !errors.Is(err, cache.ErrUploadUnknown) {
			t.Errorf("expired upload: %v", err)
		}

		// Deleting the manifest frees its blobs one grace period later.
		if err := a.DeleteManifest(ctx(t), "team/app", m.Digest); err != nil {
			t.Fatal(err)
		}
		c.add(2 * time.Hour)
		if st, err = b.GC(ctx(t)); err != nil {
			t.Fatal(err)
		}
		if st.LinksRemoved != 2 || st.BlobsRemoved != 2 {
			t.Errorf("GC after the manifest's delete: %+v, want its 2 links and 2 blobs", st)
		}
	})
}

// Manifests, tags, referrers and listings through the store, across
// replicas.
func TestManifests(t *testing.T) {
	each(t, func(t *testing.T, replica replicas) {
		a, b := replica(), replica()
		config := push(t, a, "team/app", []byte(`{}`))
		m, body := imageManifest(t, config)
		if err := a.PutManifest(ctx(t), "team/app", m, body, []string{"v1", "latest"}); err != nil {
			t.Fatal(err)
		}
		if d, err := b.ResolveTag(ctx(t), "team/app", "latest"); err != nil || d != m.Digest {
			t.Fatalf("ResolveTag: %v, %v", d, err)
		}
		got, gotBody, err := b.GetManifest(ctx(t), "team/app", m.Digest)
		if err != nil || !bytes.Equal(gotBody, body) || got.MediaType != m.MediaType || got.Size != int64(len(body)) {
			t.Fatalf("GetManifest: %+v, %v", got, err)
		}
		if _, _, err := b.GetManifest(ctx(t), "other", m.Digest); !errors.Is(err, cache.ErrManifestUnknown) {
			t.Errorf("manifest under another repository: %v", err)
		}
		tags, more, err := b.Tags(ctx(t), "team/app", "", 1)
		if err != nil || len(tags) != 1 || tags[0] != "latest" || !more {
			t.Errorf("Tags page 1: %v %v %v", tags, more, err)
		}
		if _, _, err := b.Tags(ctx(t), "nothing/here", "", 10); !errors.Is(err, cache.ErrRepoUnknown) {
			t.Errorf("Tags of an unknown repository: %v", err)
		}
		repos, _, err := b.Repositories(ctx(t), "", 10)
		if err != nil || len(repos) != 1 || repos[0] != "team/app" {
			t.Errorf("Repositories: %v, %v", repos, err)
		}

		// A referrer.
		sig := cache.Manifest{MediaType: "application/vnd.oci.image.manifest.v1+json", Subject: m.Digest, ArtifactType: "application/example"}
		sigBody := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/example","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"` + config.String() + `","size":2},"layers":[],"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + m.Digest.String() + `","size":1}}`)
		sig.Digest = cache.FromBytes(cache.SHA256, sigBody)
		if err := b.PutManifest(ctx(t), "team/app", sig, sigBody, nil); err != nil {
			t.Fatal(err)
		}
		refs, _, err := a.Referrers(ctx(t), "team/app", m.Digest, "", -1)
		if err != nil || len(refs) != 1 || refs[0].Digest != sig.Digest || refs[0].ArtifactType != "application/example" {
			t.Errorf("Referrers: %+v, %v", refs, err)
		}

		if err := a.DeleteTag(ctx(t), "team/app", "v1"); err != nil {
			t.Fatal(err)
		}
		if _, err := b.ResolveTag(ctx(t), "team/app", "v1"); !errors.Is(err, cache.ErrTagUnknown) {
			t.Errorf("deleted tag: %v", err)
		}
		if err := b.SetTagFetched(ctx(t), "team/app", "latest", time.Unix(1700000000, 0)); err != nil {
			t.Fatal(err)
		}
		if ti, err := a.TagInfo(ctx(t), "team/app", "latest"); err != nil || !ti.Fetched.Equal(time.Unix(1700000000, 0)) {
			t.Errorf("TagInfo: %+v, %v", ti, err)
		}
		if err := a.DeleteManifest(ctx(t), "team/app", m.Digest); err != nil {
			t.Fatal(err)
		}
		if _, err := b.ResolveTag(ctx(t), "team/app", "latest"); !errors.Is(err, cache.ErrTagUnknown) {
			t.Errorf("tag of a deleted manifest: %v", err)
		}
	})
}

// A push of a digest GC is sweeping: the push waits for the sweep, and
// then either records bytes that are really there or says the bytes were
// collected — never a record without bytes.
func TestPushDuringSweep(t *testing.T) {
	each(t, func(t *testing.T, replica replicas) {
		c := &clock{t: time.Now()}
		a, b := replica(), replica()
		a.now, b.now = c.now, c.now
		data := randomBytes(5000)
		d := push(t, a, "", data)
		c.add(2 * time.Hour)
		sweep := func() {
			t.Helper()
			marked, err := a.meta.MarkBlobsDeleting(ctx(t), []cache.Digest{d}, c.now().Add(-time.Hour))
			if err != nil || len(marked) != 1 {
				t.Fatalf("mark: %v, %v", marked, err)
			}
			if err := a.blobs.Delete(ctx(t), d); err != nil {
				t.Fatal(err)
			}
		}

		// The bytes came back after the sweep deleted them: recorded.
		sweep()
		done := make(chan error, 1)
		go func() {
			_, err := b.PutBlob(ctx(t), d, int64(len(data)), bytes.NewReader(data))
			done <- err
		}()
		time.Sleep(300 * time.Millisecond)
		select {
		case err := <-done:
			t.Fatalf("push returned (%v) while its digest was being swept", err)
		default:
		}
		if err := a.meta.ForgetBlobs(ctx(t), []cache.Digest{d}); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatalf("push after the sweep: %v", err)
		}
		if !bytes.Equal(readBlob(t, a, d), data) {
			t.Fatal("pushed blob unreadable after the sweep")
		}

		// The bytes were written before the sweep deleted them: the push
		// says so, and nothing is recorded.
		c.add(2 * time.Hour)
		sweep()
		go func() { done <- b.record(ctx(t), d, int64(len(data))) }()
		time.Sleep(300 * time.Millisecond)
		if err := a.meta.ForgetBlobs(ctx(t), []cache.Digest{d}); err != nil {
			t.Fatal(err)
		}
		if err := <-done; !errors.Is(err, ErrCollected) {
			t.Fatalf("record of swept bytes: %v, want ErrCollected", err)
		}
		if _, err := a.StatBlob(ctx(t), d); !errors.Is(err, cache.ErrBlobUnknown) {
			t.Fatalf("a record without bytes: StatBlob %v", err)
		}
	})
}

// A whole GC pass between a push's write and its record (the window a
// slow database opens) leaves the pushed blob alone: the push touched the
// old record before writing, so the pass cannot mark it.
func TestGCBetweenWriteAndRecord(t *testing.T) {
	each(t, func(t *testing.T, replica replicas) {
		c := &clock{t: time.Now()}
		a, b := replica(), replica()
		a.now, b.now = c.now, c.now
		data := randomBytes(4000)
		d := push(t, a, "", data) // unlinked: GC's once the grace period is over
		c.add(2 * time.Hour)
		b.afterWrite = func() {
			if _, err := a.GC(ctx(t)); err != nil {
				t.Errorf("GC: %v", err)
			}
		}
		if _, err := b.PutBlob(ctx(t), d, int64(len(data)), bytes.NewReader(data)); err != nil {
			t.Fatalf("push again: %v", err)
		}
		if !bytes.Equal(readBlob(t, b, d), data) {
			t.Fatal("acknowledged push lost its bytes to a GC pass")
		}
	})
}

// TestGCPaused: a paused replica's background pass does nothing and does
// not take the GC lease, so another replica may lead; resumed, it
// collects. read_only pauses it (caddymodule), so a read-only registry
// deletes nothing.
func TestGCPaused(t *testing.T) {
	each(t, func(t *testing.T, replica replicas) {
		c := &clock{t: time.Now()}
		a, b := replica(), replica()
		a.now, b.now = c.now, c.now
		orphan := push(t, a, "", randomBytes(1000))
		u, err := a.OpenUpload(ctx(t), "team/app", "")
		if err != nil {
			t.Fatal(err)
		}
		c.add(25 * time.Hour)

		a.PauseGC(true)
		if !a.GCPaused() || b.GCPaused() {
			t.Fatalf("paused: a %v, b %v; want only a", a.GCPaused(), b.GCPaused())
		}
		if a.gcRound(ctx(t)) {
			t.Error("a background pass ran while paused")
		}
		if _, err := b.StatBlob(ctx(t), orphan); err != nil {
			t.Errorf("paused GC removed a blob: %v", err)
		}
		if _, err := b.meta.Upload(ctx(t), u.ID); err != nil {
			t.Errorf("paused GC removed an upload session: %v", err)
		}
		l, ok, err := b.leases.Acquire(ctx(t), "gc", time.Minute)
		if err != nil || !ok {
			t.Fatalf("the GC lease after a paused pass: %v, %v; want free", ok, err)
		}
		_ = l.Release(ctx(t))

		a.PauseGC(false)
		if !a.gcRound(ctx(t)) {
			t.Error("no pass after resume")
		}
		if _, err := b.StatBlob(ctx(t), orphan); !errors.Is(err, cache.ErrBlobUnknown) {
			t.Errorf("blob after the resumed pass: %v, want collected", err)
		}
	})
}

// Pausing stops the pass this replica is running: read_only switched on
// mid-pass deletes nothing more, and the lease is free again.
func TestGCPauseStopsRunningPass(t *testing.T) {
	each(t, func(t *testing.T, replica replicas) {
		c := &clock{t: time.Now()}
		a, b := replica(), replica()
		a.now, b.now = c.now, c.now
		orphan := push(t, a, "", randomBytes(1000))
		c.add(2 * time.Hour)
		a.passBegun = func(pass context.Context) {
			a.PauseGC(true)
			select {
			case <-pass.Done():
			case <-time.After(10 * time.Second):
				t.Error("the pause did not stop the running pass")
			}
		}
		if !a.gcRound(ctx(t)) {
			t.Fatal("no pass ran")
		}
		if _, err := b.StatBlob(ctx(t), orphan); err != nil {
			t.Errorf("a pass paused as it began removed a blob: %v", err)
		}
		l, ok, err := b.leases.Acquire(ctx(t), "gc", time.Minute)
		if err != nil || !ok {
			t.Fatalf("the GC lease after the stopped pass: %v, %v; want free", ok, err)
		}
		_ = l.Release(ctx(t))
	})
}

// TestGCClockSkew: times are written on the writing replica's clock and
// judged on the GC leader's, so a writer whose clock is behind by a
// skew shortens its grace by that skew. Minutes of skew against the
// default hour keep a push's layers (linked, no manifest yet) through
// the leader's pass; a skew past the grace lets the pass take them (the
// registry then refuses the manifest PUT: nothing acknowledged is lost).
func TestGCClockSkew(t *testing.T) {
	each(t, func(t *testing.T, replica replicas) {
		for _, tt := range []struct {
			skew      time.Duration
			collected bool
		}{
			{5 * time.Minute, false},
			{2 * time.Hour, true},
		} {
			real := &clock{t: time.Now()}
			behind := &clock{t: real.now().Add(-tt.skew)}
			a, b := replica(), replica()
			a.now, b.now = behind.now, real.now
			repo := "skew/app" + tt.skew.String()
			config := push(t, a, repo, randomBytes(100))
			layer := push(t, a, repo, randomBytes(1000))
			st, err := b.GC(ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range []cache.Digest{config, layer} {
				_, err := a.HasBlob(ctx(t), repo, d)
				if gone := errors.Is(err, cache.ErrBlobUnknown); gone != tt.collected {
					t.Errorf("skew %s: after the leader's pass (%+v) the pushed blob %s: %v, want collected=%v", tt.skew, st, d, err, tt.collected)
				}
			}
		}
	})
}
