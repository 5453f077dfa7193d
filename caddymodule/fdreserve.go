package caddymodule

// Connections must not take the process's last file descriptors. Each
// accepted connection holds one, and nothing else bounds them: a flood of
// idle connections (they wait up to read_header's minute for a request)
// leaves none for a blob's file, an upstream connection or the metadata
// database, whose write then fails halfway (see cache/internal/fdguard;
// badger left without a memtable panics on every read and exits on the
// next write). A client that closes and reopens many connections at once
// can even take the descriptors a write was promised. So the listener
// accepts only while a reserve of descriptors is free: past it, new
// connections wait in the kernel's queue, as they would at the limit
// itself, until some close.
//
// oci_registry adds this wrapper to its server in a Caddyfile by itself;
// a JSON config lists it in the server's listener_wrappers. A server
// without it still works, so the registry says so in its log, at warn, on
// its first request through such a listener (checkFDReserve).

import (
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/internal/fdprobe"
)

// reserveSlack is how many listeners' checks at once are not taken for a
// shortage of descriptors (each holds one for a moment).
const reserveSlack = 8

func init() {
	caddy.RegisterModule(FDReserve{})
}

// DefaultFDReserve is how many file descriptors FDReserve keeps free
// when Reserve is zero.
const DefaultFDReserve = 64

// FDReserve is the listener wrapper caddy.listeners.oci_fd_reserve: it
// accepts a connection only while Reserve file descriptors are free.
type FDReserve struct {
	// Reserve is how many file descriptors must stay free for what
	// requests open (blob files, upstream connections, the metadata
	// database) for another connection to be accepted. 0 means
	// DefaultFDReserve; negative turns the wrapper off.
	Reserve int `json:"reserve,omitempty"`
}

// CaddyModule returns the module information.
func (FDReserve) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.listeners.oci_fd_reserve",
		New: func() caddy.Module { return new(FDReserve) },
	}
}

// UnmarshalCaddyfile parses
//
//	oci_fd_reserve [<n>|off]
func (r *FDReserve) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the wrapper's name
	if d.NextArg() {
		switch v := d.Val(); v {
		case "off":
			r.Reserve = -1
		default:
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return d.Errf("oci_fd_reserve: %q is not a positive number of file descriptors (or off)", v)
			}
			r.Reserve = n
		}
	}
	if d.NextArg() {
		return d.Errf("oci_fd_reserve takes one argument, got %q too", d.Val())
	}
	return nil
}

// WrapListener returns ln, accepting only while the reserve is free.
func (r *FDReserve) WrapListener(ln net.Listener) net.Listener {
	n := r.Reserve
	if n == 0 {
		n = DefaultFDReserve
	}
	port := listenerPort(ln.Addr())
	wrappedPorts.add(port)
	if n < 0 {
		// Turned off on purpose: counts as wrapped, so nothing warns.
		return &unreservedListener{Listener: ln, port: port}
	}
	return &reserveListener{Listener: ln, reserve: n, port: port, closed: make(chan struct{})}
}

// unreservedListener is a listener whose reserve is off: it only keeps
// its port counted as wrapped while it is open.
type unreservedListener struct {
	net.Listener
	port      int
	closeOnce sync.Once
}

func (l *unreservedListener) Close() error {
	l.closeOnce.Do(func() { wrappedPorts.remove(l.port) })
	return l.Listener.Close()
}

type reserveListener struct {
	net.Listener
	reserve   int
	port      int
	closed    chan struct{}
	closeOnce sync.Once
}

// Accept waits, before it takes a connection, until the reserve is free
// (polling: descriptors are freed by every kind of close, which nothing
// announces), or the listener closes.
func (l *reserveListener) Accept() (net.Conn, error) {
	wait := 5 * time.Millisecond
	for !fdprobe.Free(l.reserve, reserveSlack) {
		select {
		case <-l.closed:
			return nil, net.ErrClosed
		case <-time.After(wait):
		}
		wait = min(2*wait, 100*time.Millisecond)
	}
	return l.Listener.Accept()
}

func (l *reserveListener) Close() error {
	l.closeOnce.Do(func() {
		close(l.closed)
		wrappedPorts.remove(l.port)
	})
	return l.Listener.Close()
}

// wrappedPorts counts the open listeners this wrapper wraps, by TCP port:
// what a request knows of its listener is the local address of its
// connection, whose host may differ from the listener's (":5000" accepts
// on 127.0.0.1:5000), never its port.
var wrappedPorts portCounts

type portCounts struct {
	mu sync.Mutex
	n  map[int]int
}

func (c *portCounts) add(port int) {
	if port == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = make(map[int]int)
	}
	c.n[port]++
}

func (c *portCounts) remove(port int) {
	if port == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[port]--; c.n[port] <= 0 {
		delete(c.n, port)
	}
}

func (c *portCounts) has(port int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[port] > 0
}

// listenerPort is a TCP address's port; 0 for other kinds (unix sockets).
func listenerPort(a net.Addr) int {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.Port
	}
	return 0
}

// checkFDReserve warns, once per handler, when the first request it
// serves came through a TCP listener this wrapper does not guard: a JSON
// config without it in listener_wrappers, or a Caddyfile whose global
// servers option replaced the wrappers oci_registry added.
func (rg *Registry) checkFDReserve(r *http.Request) {
	if rg.fdReserveChecked.Load() || !rg.fdReserveChecked.CompareAndSwap(false, true) {
		return
	}
	local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	port := listenerPort(local)
	if port == 0 || wrappedPorts.has(port) {
		return
	}
	rg.logger.Warn("the listener of this server lacks the oci_fd_reserve wrapper: a flood of connections can take the file descriptors metadata writes need; add {\"wrapper\": \"oci_fd_reserve\"} to the server's listener_wrappers (README: Out of file descriptors)",
		zap.String("local_address", local.String()))
}

var (
	_ caddy.ListenerWrapper = (*FDReserve)(nil)
	_ caddyfile.Unmarshaler = (*FDReserve)(nil)
)
