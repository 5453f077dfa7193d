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
// a JSON config lists it in the server's listener_wrappers.

import (
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

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
	if n < 0 {
		return ln
	}
	return &reserveListener{Listener: ln, reserve: n, closed: make(chan struct{})}
}

type reserveListener struct {
	net.Listener
	reserve   int
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
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

var (
	_ caddy.ListenerWrapper = (*FDReserve)(nil)
	_ caddyfile.Unmarshaler = (*FDReserve)(nil)
)
