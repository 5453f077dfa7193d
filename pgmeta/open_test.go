package pgmeta

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// TestOpenRefusesQuietly: a DSN that does not parse, or names a server
// that is not there, fails Open promptly, and the error never shows the
// password (it ends up in logs).
func TestOpenRefusesQuietly(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := l.Addr().(*net.TCPAddr).Port
	l.Close()
	const password = "hunter2secret"
	for name, dsn := range map[string]string{
		"bad port":        "postgres://u:" + password + "@127.0.0.1:notaport/db",
		"bad option":      "postgres://u:" + password + "@127.0.0.1/db?sslmode=sometimes",
		"key=value":       "host=127.0.0.1 password=" + password + " port=x",
		"key = value":     "host=127.0.0.1 password = " + password + " port=x",
		"password as url": "postgres://u:" + password + "@@/",
		"no server":       fmt.Sprintf("postgres://u:%s@127.0.0.1:%d/db?sslmode=disable", password, closedPort),
	} {
		start := time.Now()
		s, err := Open(context.Background(), Options{DSN: dsn, Timeout: 2 * time.Second})
		if err == nil {
			s.Close()
			t.Errorf("%s: Open succeeded", name)
			continue
		}
		if strings.Contains(err.Error(), password) {
			t.Errorf("%s: error shows the password: %v", name, err)
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("%s: took %s to fail", name, took)
		}
	}
}
