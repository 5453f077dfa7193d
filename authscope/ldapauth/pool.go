package ldapauth

// A bounded pool of LDAP connections. Each login holds one connection
// for its binds and searches (a bind changes who the connection is, so
// two logins never share one at a time), and the directory never sees
// more than the pool's size of them from this server, however many
// clients log in at once.

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/caddy-oci/caddy-oci/authscope"
)

type pool struct {
	size int
	dial func(context.Context) (*ldap.Conn, error)
	// slots holds a token for each open connection, idle or in use.
	slots chan struct{}
	// idle connections, most recently returned last.
	idle chan *ldap.Conn

	mu     sync.Mutex
	closed bool
}

func newPool(size int, dial func(context.Context) (*ldap.Conn, error)) *pool {
	return &pool{size: size, dial: dial, slots: make(chan struct{}, size), idle: make(chan *ldap.Conn, size)}
}

// get returns an idle connection (reused) or a new one, waiting at most
// wait for one to be free.
func (p *pool) get(ctx context.Context, wait time.Duration) (c *ldap.Conn, reused bool, err error) {
	var timeout <-chan time.Time
	for {
		select {
		case c := <-p.idle:
			if c.IsClosing() {
				p.discard(c)
				continue
			}
			return c, true, nil
		default:
		}
		if timeout == nil {
			t := time.NewTimer(wait)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case c := <-p.idle:
			if c.IsClosing() {
				p.discard(c)
				continue
			}
			return c, true, nil
		case p.slots <- struct{}{}:
			c, err := p.dial(ctx)
			if err != nil {
				<-p.slots
				return nil, false, err
			}
			return c, false, nil
		case <-timeout:
			return nil, false, fmt.Errorf("%w: ldap: all %d connections busy for %s", authscope.ErrUnavailable, p.size, wait)
		case <-ctx.Done():
			return nil, false, fmt.Errorf("%w: ldap: waiting for a connection: %w", authscope.ErrUnavailable, ctx.Err())
		}
	}
}

// put returns a connection that is still good.
func (p *pool) put(c *ldap.Conn) {
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed || c.IsClosing() {
		p.discard(c)
		return
	}
	// Never blocks: there are no more connections than slots.
	p.idle <- c
}

// discard closes a connection and frees its slot.
func (p *pool) discard(c *ldap.Conn) {
	_ = c.Close()
	<-p.slots
}

// close closes the idle connections, and those in use as they come back.
func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	for {
		select {
		case c := <-p.idle:
			p.discard(c)
		default:
			return
		}
	}
}
