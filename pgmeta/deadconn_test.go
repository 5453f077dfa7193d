package pgmeta

import (
	"context"
	"errors"
	"io"
	"maps"
	"net"
	"net/url"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/metastore"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// resettingProxy forwards TCP to target and, on reset, resets every
// connection through it at once: pooled connections die while idle, as
// behind a load balancer's idle timeout or a network blip.
type resettingProxy struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []*net.TCPConn
	// mute drops what the server sends: a statement goes out and runs,
	// and its answer is lost on the way back.
	mute atomic.Bool
}

func newResettingProxy(t *testing.T, target string) *resettingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &resettingProxy{ln: ln}
	t.Cleanup(func() { ln.Close(); p.reset() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c.(*net.TCPConn), s.(*net.TCPConn))
			p.mu.Unlock()
			go func() { _, _ = io.Copy(s, c); s.Close() }()
			go func() { _, _ = io.Copy(c, mutable{s, &p.mute}); c.Close() }()
		}
	}()
	return p
}

// throughProxy starts a resettingProxy to dsn's server and returns it
// with dsn through it; oneConn limits the pool to one connection, so the
// one a test warmed is the one the proxy then cuts or mutes.
func throughProxy(t *testing.T, dsn string, oneConn bool) (*resettingProxy, string) {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	p := newResettingProxy(t, u.Host)
	u.Host = p.ln.Addr().String()
	if oneConn {
		q := u.Query()
		q.Set("pool_max_conns", "1")
		u.RawQuery = q.Encode()
	}
	return p, u.String()
}

// mutable reads r, dropping what it reads while mute is on.
type mutable struct {
	r    io.Reader
	mute *atomic.Bool
}

func (m mutable) Read(b []byte) (int, error) {
	for {
		n, err := m.r.Read(b)
		if n == 0 || err != nil || !m.mute.Load() {
			return n, err
		}
	}
}

func (p *resettingProxy) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.SetLinger(0)
		c.Close()
	}
	p.conns = nil
}

// TestDeadPooledConnection: every call, made right after the pool's idle
// connections were reset (idle less than the second after which pgx
// pings a connection before it hands it out), succeeds: a statement that
// could not be sent on a dead connection is sent again on another. Before,
// each such call failed as unavailable (the registry's 503) although
// PostgreSQL was there: seen in e2e TestReplicaNetworkCuts, a manifest
// GET just after the network was back.
func TestDeadPooledConnection(t *testing.T) {
	srv := pgtest.Start(t)
	p, proxied := throughProxy(t, srv.NewDatabase(t), false)
	s, err := Open(context.Background(), Options{DSN: proxied, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	var seq atomic.Int64
	calls := metadataCalls(t, s, &seq)
	maps.Copy(calls, map[string]func() error{
		"APIKeys": func() error { _, err := s.APIKeys(); return err },
		"Session": func() error { _, err := s.Session("none"); return err },
	})
	names := make([]string, 0, len(calls))
	for name := range calls {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		_ = calls[name]() // a connection in the pool
		p.reset()
		if err := calls[name](); errors.Is(err, metastore.ErrUnavailable) {
			t.Errorf("%s right after its pooled connection died: %v", name, err)
		}
	}
}
