package cache

import (
	"errors"
	"strings"
	"testing"
)

func TestParseDigest(t *testing.T) {
	t.Parallel()
	h64 := strings.Repeat("a", 64)
	tests := []struct {
		in      string
		wantErr error
	}{
		{"sha256:" + h64, nil},
		{"sha512:" + strings.Repeat("0", 128), nil},
		{"sha256:" + strings.Repeat("A", 64), ErrDigestInvalid},
		{"sha256:" + h64[:63], ErrDigestInvalid},
		{"sha256:" + h64 + "0", ErrDigestInvalid},
		{"sha256:" + h64[:62] + "/a", ErrDigestInvalid},
		{"sha256" + h64, ErrDigestInvalid},
		{":" + h64, ErrDigestInvalid},
		{"sha256:", ErrDigestInvalid},
		{"", ErrDigestInvalid},
		{"SHA256:" + h64, ErrDigestInvalid},
		{"md5:d41d8cd98f00b204e9800998ecf8427e", ErrDigestUnsupported},
		{"sha384:" + h64, ErrDigestUnsupported},
	}
	for _, tt := range tests {
		d, err := ParseDigest(tt.in)
		if tt.wantErr == nil && err != nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
			t.Errorf("ParseDigest(%q) = %v, want %v", tt.in, err, tt.wantErr)
			continue
		}
		if err == nil && d.String() != tt.in {
			t.Errorf("String() = %q, want %q", d.String(), tt.in)
		}
	}
}

func FuzzParseDigest(f *testing.F) {
	for _, s := range []string{
		"sha256:" + strings.Repeat("a", 64),
		"sha512:" + strings.Repeat("f", 128),
		"sha256:" + strings.Repeat("G", 64),
		"md5:00", "sha256:", ":", "", "sha256:../../x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDigest(s)
		if err != nil {
			if !errors.Is(err, ErrDigestInvalid) && !errors.Is(err, ErrDigestUnsupported) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		if d.String() != s {
			t.Fatalf("String() = %q, input %q", d.String(), s)
		}
		d2, err := ParseDigest(d.String())
		if err != nil || d2 != d {
			t.Fatalf("round trip: %v, %v != %v", err, d2, d)
		}
		if d.Algorithm.HexLen() == 0 || len(d.Hex) != d.Algorithm.HexLen() {
			t.Fatalf("accepted %q with wrong length", s)
		}
		for _, c := range d.Hex {
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
				t.Fatalf("accepted non-hex %q", s)
			}
		}
		if checkDigest(d) != nil {
			t.Fatalf("checkDigest disagrees with ParseDigest on %q", s)
		}
	})
}
