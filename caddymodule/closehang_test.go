package caddymodule

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// TestReloadPastAStoreThatCannotClose: a store whose folder was removed
// under it cannot close (badger retries its last flush for ever). A
// reload to another folder still completes, within storeCloseWait, and
// the new config serves; the lost store's close goes on in the
// background. The reload hung for ever, and every reload after it.
func TestReloadPastAStoreThatCannotClose(t *testing.T) {
	defer func(w time.Duration) { storeCloseWait = w }(storeCloseWait)
	storeCloseWait = time.Second
	addr, lost, next := freeAddr(t), t.TempDir(), t.TempDir()
	if err := caddy.Load(config(t, addr, lost, 0), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopCaddy(t) })
	blob := []byte("in the memtable when the folder goes")
	sum := sha256.Sum256(blob)
	resp, err := http.Post("http://"+addr+"/v2/gone/blobs/uploads/?digest=sha256:"+hex.EncodeToString(sum[:]),
		"application/octet-stream", bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("push: %s", resp.Status)
	}
	if err := os.RemoveAll(lost); err != nil {
		t.Fatal(err)
	}

	done := make(chan error, 1)
	go func() { done <- caddy.Load(config(t, addr, next, 0), true) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the reload still waits for the lost store's close after 30 s")
	}
	resp, err = http.Get("http://" + addr + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("the new config answers %s", resp.Status)
	}
}
