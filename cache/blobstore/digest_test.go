package blobstore

import (
	"errors"
	"strings"
	"testing"
)

func TestParseDigest(t *testing.T) {
	good := FromBytes(SHA256, []byte("x"))
	tests := []struct {
		in   string
		want error
	}{
		{good.String(), nil},
		{FromBytes(SHA512, []byte("x")).String(), nil},
		{"sha256:" + strings.ToUpper(good.Hex), ErrDigestInvalid},
		{"sha256:" + good.Hex[:63], ErrDigestInvalid},
		{"sha256:../../" + good.Hex[6:], ErrDigestInvalid},
		{"sha256", ErrDigestInvalid},
		{":" + good.Hex, ErrDigestInvalid},
		{"SHA256:" + good.Hex, ErrDigestInvalid},
		{"md5:d41d8cd98f00b204e9800998ecf8427e", ErrDigestUnsupported},
	}
	for _, tt := range tests {
		d, err := ParseDigest(tt.in)
		if !errors.Is(err, tt.want) || (err == nil) != (tt.want == nil) {
			t.Errorf("ParseDigest(%q) = %v, want %v", tt.in, err, tt.want)
		}
		if err == nil && d.String() != tt.in {
			t.Errorf("ParseDigest(%q).String() = %q", tt.in, d)
		}
	}
}

func TestValidateRefusesHandMadeDigests(t *testing.T) {
	for _, d := range []Digest{
		{},
		{Algorithm: SHA256, Hex: "../" + strings.Repeat("a", 61)},
		{Algorithm: "../x", Hex: strings.Repeat("a", 64)},
		{Algorithm: SHA512, Hex: strings.Repeat("a", 64)},
	} {
		if err := d.Validate(); !errors.Is(err, ErrDigestInvalid) {
			t.Errorf("Validate(%q) = %v, want ErrDigestInvalid", d, err)
		}
	}
}
