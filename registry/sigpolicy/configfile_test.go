package sigpolicy_test

import (
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/registry/sigpolicy"
)

// cosign_keys and notation_certs are files the config names: a pipe or a
// device there fails the load at once, as every other config file does
// (configfile.Read), instead of hanging it or filling memory.
func TestKeyFilesMustBeRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "key.pub")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skip(err)
	}
	for _, c := range []sigpolicy.Config{
		{Match: "**", CosignKeys: []string{fifo}},
		{Match: "**", NotationCerts: []string{fifo}},
		{Match: "**", CosignKeys: []string{dir}},
	} {
		done := make(chan error, 1)
		go func() { _, err := sigpolicy.New(c); done <- err }()
		select {
		case err := <-done:
			if err == nil {
				t.Fatalf("%+v: loaded", c)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%+v: still loading after 5 s", c)
		}
	}
}
