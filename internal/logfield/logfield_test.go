package logfield

import (
	"strings"
	"testing"
)

func TestBound(t *testing.T) {
	if got := Bound("short"); got != "short" {
		t.Errorf("Bound(short) = %q", got)
	}
	long := strings.Repeat("a", Max+10)
	if got := Bound(long); !strings.HasPrefix(got, long[:Max]) || !strings.HasSuffix(got, "(10 more bytes)") || len(got) > Max+32 {
		t.Errorf("Bound(%d bytes) = %q", len(long), got)
	}
	many := make([]string, 100)
	if got := Strings("k", many).Interface; got == nil {
		t.Error("Strings lost its values")
	}
}
