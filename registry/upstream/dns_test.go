package upstream

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// dnsServer is a DNS server on loopback whose answers a test scripts, so
// that a name can change its address between two lookups (DNS
// rebinding) without touching the machine's resolver configuration.
type dnsServer struct {
	conn net.PacketConn
	mu   sync.Mutex
	// script: by name (fully qualified), the IPv4 answers of the first,
	// second, ... A query; the last holds once they run out.
	script map[string][][]netip.Addr
	asked  map[string]int // A queries so far, by name
}

func newDNSServer(t *testing.T) *dnsServer {
	t.Helper()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &dnsServer{conn: conn, script: map[string][][]netip.Addr{}, asked: map[string]int{}}
	t.Cleanup(func() { conn.Close() })
	go s.serve()
	return s
}

// answer scripts name's A answers: the n-th query gets answers[n].
func (s *dnsServer) answer(name string, answers ...string) {
	var script [][]netip.Addr
	for _, a := range answers {
		script = append(script, []netip.Addr{netip.MustParseAddr(a)})
	}
	s.mu.Lock()
	s.script[name+"."] = script
	s.mu.Unlock()
}

// queries is how many A queries name got.
func (s *dnsServer) queries(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.asked[name+"."]
}

// resolver is Go's own resolver asking only this server.
func (s *dnsServer) resolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "udp", s.conn.LocalAddr().String())
	}}
}

func (s *dnsServer) serve() {
	buf := make([]byte, 1500)
	for {
		n, from, err := s.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		if out := s.reply(buf[:n]); out != nil {
			_, _ = s.conn.WriteTo(out, from)
		}
	}
}

func (s *dnsServer) reply(query []byte) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil
	}
	q, err := p.Question()
	if err != nil {
		return nil
	}
	s.mu.Lock()
	script, known := s.script[q.Name.String()]
	var addrs []netip.Addr
	if known && q.Type == dnsmessage.TypeA {
		i := min(s.asked[q.Name.String()], len(script)-1)
		s.asked[q.Name.String()]++
		addrs = script[i]
	}
	s.mu.Unlock()
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired}
	if !known {
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	b.EnableCompression()
	_ = b.StartQuestions()
	_ = b.Question(q)
	_ = b.StartAnswers()
	for _, a := range addrs {
		_ = b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 0}, dnsmessage.AResource{A: a.As4()})
	}
	out, err := b.Finish()
	if err != nil {
		return nil
	}
	return out
}
