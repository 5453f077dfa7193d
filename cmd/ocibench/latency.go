package main

import (
	"io"
	"net"
	"sync"
	"time"
)

// delayProxy forwards TCP connections from its own loopback address to
// target, delaying every byte by half of rtt in each direction, without
// limiting bandwidth: an upstream that is far away (-upstream-rtt), as
// a real one is, where loopback has no distance at all. Both ways of the
// cold mode reach upstream through it (the client sits beside the mirror).
type delayProxy struct {
	ln     net.Listener
	target string
	half   time.Duration
	wg     sync.WaitGroup
}

func startDelayProxy(target string, rtt time.Duration) (*delayProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &delayProxy{ln: ln, target: target, half: rtt / 2}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

func (p *delayProxy) addr() string { return p.ln.Addr().String() }

func (p *delayProxy) close() {
	p.ln.Close()
	p.wg.Wait()
}

func (p *delayProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			u, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				return
			}
			done := make(chan struct{}, 2)
			go func() { p.pipe(u, c); done <- struct{}{} }()
			go func() { p.pipe(c, u); done <- struct{}{} }()
			<-done
			c.Close()
			u.Close()
			<-done
		}()
	}
}

// piece is bytes read at a time, to be written half an RTT later.
type piece struct {
	at  time.Time
	buf []byte
}

// pipe copies src to dst, each piece written p.half after it was read;
// the queue holds up to 64 MiB in flight, more than a bandwidth-delay
// product of loopback speeds at tens of milliseconds.
func (p *delayProxy) pipe(dst io.Writer, src io.Reader) {
	q := make(chan piece, 1024)
	go func() {
		defer close(q)
		for {
			buf := make([]byte, 64<<10)
			n, err := src.Read(buf)
			if n > 0 {
				q <- piece{time.Now().Add(p.half), buf[:n]}
			}
			if err != nil {
				return
			}
		}
	}()
	for pc := range q {
		time.Sleep(time.Until(pc.at))
		if _, err := dst.Write(pc.buf); err != nil {
			for range q { // let the reader end
			}
			return
		}
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}
