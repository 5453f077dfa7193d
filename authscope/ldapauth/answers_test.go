package ldapauth

import (
	"bytes"
	"strings"
	"testing"

	ber "github.com/go-asn1-ber/asn1-ber"
)

// TestDirectoryAnswersBounded: a message from the directory past
// MaxAnswerBytes is refused by the reader go-ldap uses, before it is
// held whole; one within it is read.
func TestDirectoryAnswersBounded(t *testing.T) {
	for _, tc := range []struct {
		size int
		ok   bool
	}{{size: 1 << 20, ok: true}, {size: MaxAnswerBytes + 1, ok: false}, {size: 64 << 20, ok: false}} {
		msg := ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, strings.Repeat("m", tc.size), "diagnosticMessage")
		_, err := ber.ReadPacket(bytes.NewReader(msg.Bytes()))
		if (err == nil) != tc.ok {
			t.Errorf("a message of %d bytes: %v; want read: %v", tc.size, err, tc.ok)
		}
	}
}
