package e2e

import (
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// cutProxy is a TCP proxy between a replica and PostgreSQL or S3 that
// resets its connections while cutting is on, as a flaky network, a
// load balancer's idle timeout or a NAT table overflowing does: a
// connection is cut (RST both ways) after a random number of bytes, so
// mid-query and mid-body, and idle pooled connections are cut at random.
type cutProxy struct {
	target string
	ln     net.Listener
	// budget is the most bytes (both ways) a connection carries while
	// cutting is on; each connection draws its own share of it.
	budget  int
	cutting atomic.Bool
	cuts    atomic.Int64

	mu    sync.Mutex
	conns map[*proxied]struct{}
}

// proxied is one connection through the proxy.
type proxied struct {
	client, server *net.TCPConn
	left           atomic.Int64 // bytes before the cut, while cutting
	once           sync.Once
	// ended counts the directions that reached EOF: the second closes
	// both sockets, or every connection closed cleanly would keep its
	// two descriptors (the drill opens thousands).
	ended atomic.Int32
}

func newCutProxy(t *testing.T, target string, budget int) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{target: target, ln: ln, budget: budget, conns: map[*proxied]struct{}{}}
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for c := range p.conns {
			c.close(false)
		}
	})
	return p
}

func (p *cutProxy) addr() string { return p.ln.Addr().String() }

func (p *cutProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		pc := &proxied{client: c.(*net.TCPConn), server: s.(*net.TCPConn)}
		pc.left.Store(int64(rand.IntN(p.budget + 1)))
		p.mu.Lock()
		p.conns[pc] = struct{}{}
		p.mu.Unlock()
		go p.pipe(pc, pc.client, pc.server)
		go p.pipe(pc, pc.server, pc.client)
	}
}

// pipe copies from one side to the other until either ends or the
// connection's budget runs out while cutting.
func (p *cutProxy) pipe(pc *proxied, from, to *net.TCPConn) {
	buf := make([]byte, 16<<10)
	for {
		n, err := from.Read(buf)
		if n > 0 {
			if p.cutting.Load() && pc.left.Add(-int64(n)) < 0 {
				// Part of what was read goes through: the cut falls
				// inside a message or a body, not at its edge.
				_, _ = to.Write(buf[:rand.IntN(n+1)])
				p.cut(pc)
				return
			}
			if _, werr := to.Write(buf[:n]); werr != nil {
				p.drop(pc)
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				_ = to.CloseWrite()
				if pc.ended.Add(1) == 2 {
					p.drop(pc)
				}
				return
			}
			p.drop(pc)
			return
		}
	}
}

// cut resets both sides of pc.
func (p *cutProxy) cut(pc *proxied) {
	p.cuts.Add(1)
	pc.close(true)
	p.forget(pc)
}

func (p *cutProxy) drop(pc *proxied) {
	pc.close(false)
	p.forget(pc)
}

func (p *cutProxy) forget(pc *proxied) {
	p.mu.Lock()
	delete(p.conns, pc)
	p.mu.Unlock()
}

func (pc *proxied) close(reset bool) {
	pc.once.Do(func() {
		if reset {
			_ = pc.client.SetLinger(0)
			_ = pc.server.SetLinger(0)
		}
		pc.client.Close()
		pc.server.Close()
	})
}

// cutRandom resets one open connection, busy or idle, if there is one.
func (p *cutProxy) cutRandom() {
	p.mu.Lock()
	var all []*proxied
	for c := range p.conns {
		all = append(all, c)
	}
	p.mu.Unlock()
	if len(all) > 0 {
		p.cut(all[rand.IntN(len(all))])
	}
}

// start turns cutting on: budgets count, and one connection is cut every
// period until stop is closed.
func (p *cutProxy) start(period time.Duration, stop <-chan struct{}) {
	p.mu.Lock()
	for c := range p.conns {
		c.left.Store(int64(rand.IntN(p.budget + 1)))
	}
	p.mu.Unlock()
	p.cutting.Store(true)
	go func() {
		tick := time.NewTicker(period)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				p.cutting.Store(false)
				return
			case <-tick.C:
				p.cutRandom()
			}
		}
	}()
}
