package registry

import (
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache"
)

func TestParseName(t *testing.T) {
	good := []string{"a", "a/b", "library/debian", "a.b_c__d-e---f", "0/1/2", strings.Repeat("a", 255), "docker.io/library/x"}
	bad := []string{"", "A", "a/", "/a", "a//b", "a_", "a..b", "a___b", "-a", "a/-b", "a:b", "a b", strings.Repeat("a", 256), "_catalog", "a/B"}
	for _, s := range good {
		if _, err := ParseName(s); err != nil {
			t.Errorf("ParseName(%q): %v", s, err)
		}
	}
	for _, s := range bad {
		if _, err := ParseName(s); !errors.Is(err, ErrNameInvalid) {
			t.Errorf("ParseName(%q) accepted", s)
		}
	}
}

func TestParseReference(t *testing.T) {
	sha := "sha256:" + strings.Repeat("a", 64)
	tests := []struct {
		in  string
		tag string
		dig string
		err error
	}{
		{in: "latest", tag: "latest"},
		{in: "_x.Y-1", tag: "_x.Y-1"},
		{in: strings.Repeat("t", 128), tag: strings.Repeat("t", 128)},
		{in: sha, dig: sha},
		{in: strings.Repeat("t", 129), err: ErrTagInvalid},
		{in: ".x", err: ErrTagInvalid},
		{in: "-x", err: ErrTagInvalid},
		{in: "", err: ErrTagInvalid},
		{in: "sha256:abc", err: cache.ErrDigestInvalid},
		{in: "blake3:" + strings.Repeat("a", 64), err: cache.ErrDigestUnsupported},
	}
	for _, tc := range tests {
		ref, err := ParseReference(tc.in)
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("ParseReference(%q): %v, want %v", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || ref.Tag != tc.tag || (tc.dig != "" && ref.Digest.String() != tc.dig) || ref.String() != tc.in {
			t.Errorf("ParseReference(%q) = %+v, %v", tc.in, ref, err)
		}
	}
}

func TestParseContentRange(t *testing.T) {
	tests := []struct {
		in         string
		start, end int64
		ok         bool
	}{
		{"0-0", 0, 0, true},
		{"0-999", 0, 999, true},
		{"1000-1999", 1000, 1999, true},
		{"bytes 0-9/10", 0, 9, true},
		{"bytes 0-9/*", 0, 9, true},
		{"bytes=5-9", 5, 9, true},
		{"9-0", 0, 0, false},
		{"-1-5", 0, 0, false},
		{"a-b", 0, 0, false},
		{"5", 0, 0, false},
		{"", 0, 0, false},
		{"0-99999999999999999999", 0, 0, false},
		{"bytes 0-9/x", 0, 0, false},
		{"+1-2", 0, 0, false},
	}
	for _, tc := range tests {
		s, e, err := ParseContentRange(tc.in)
		if tc.ok != (err == nil) || tc.ok && (s != tc.start || e != tc.end) {
			t.Errorf("ParseContentRange(%q) = %d, %d, %v", tc.in, s, e, err)
		}
	}
}

func TestParseRange(t *testing.T) {
	tests := []struct {
		in   string
		size int64
		want []ByteRange
		err  error
	}{
		{"bytes=0-99", 1000, []ByteRange{{0, 100}}, nil},
		{"bytes=500-", 1000, []ByteRange{{500, 500}}, nil},
		{"bytes=-100", 1000, []ByteRange{{900, 100}}, nil},
		{"bytes=-5000", 1000, []ByteRange{{0, 1000}}, nil},
		{"bytes=900-5000", 1000, []ByteRange{{900, 100}}, nil},
		{"bytes=0-0,5-9", 1000, []ByteRange{{0, 1}, {5, 5}}, nil},
		{"bytes=1000-", 1000, nil, ErrRangeUnsatisfied},
		{"bytes=-0", 1000, nil, ErrRangeUnsatisfied},
		{"bytes=0-", 0, nil, ErrRangeUnsatisfied},
		{"bytes=5-1", 1000, nil, ErrRangeInvalid},
		{"bytes=x-1", 1000, nil, ErrRangeInvalid},
		{"bytes=", 1000, nil, ErrRangeInvalid},
		{"bytes 0-1", 1000, nil, ErrRangeInvalid},
		{"items=0-1", 1000, nil, ErrRangeUnit},
	}
	for _, tc := range tests {
		got, err := ParseRange(tc.in, tc.size)
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("ParseRange(%q): %v, want %v", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || len(got) != len(tc.want) {
			t.Errorf("ParseRange(%q) = %v, %v", tc.in, got, err)
			continue
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("ParseRange(%q)[%d] = %v, want %v", tc.in, i, got[i], tc.want[i])
			}
		}
	}
}

var (
	fuzzNameRE = regexp.MustCompile(`^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$`)
	fuzzTagRE  = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
)

func FuzzParseName(f *testing.F) {
	for _, s := range []string{"a", "a/b", "a__b", "a---b", "a.b/c_d", "A", "a//b", "", strings.Repeat("ab/", 90)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseName(s)
		if err != nil {
			return
		}
		if got != s || len(s) > MaxNameLength || !fuzzNameRE.MatchString(s) {
			t.Fatalf("ParseName accepted %q", s)
		}
	})
}

func FuzzParseReference(f *testing.F) {
	for _, s := range []string{"latest", "sha256:" + strings.Repeat("0", 64), "sha512:" + strings.Repeat("f", 128), "x:y", "-", "_"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ref, err := ParseReference(s)
		if err != nil {
			return
		}
		switch {
		case ref.IsDigest():
			if ref.Tag != "" || ref.Digest.String() != s {
				t.Fatalf("digest reference %q parsed as %+v", s, ref)
			}
			if _, err := cache.ParseDigest(ref.Digest.String()); err != nil {
				t.Fatalf("accepted digest %q does not reparse: %v", s, err)
			}
		default:
			if ref.Tag != s || !fuzzTagRE.MatchString(s) {
				t.Fatalf("ParseReference accepted tag %q", s)
			}
		}
	})
}

func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{"0-0", "0-1023", "bytes 0-9/10", "bytes=1-2", "9-0", "-", "1-", "bytes */10"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		start, end, err := ParseContentRange(s)
		if err == nil && (start < 0 || end < start) {
			t.Fatalf("ParseContentRange(%q) = %d, %d", s, start, end)
		}
		for _, size := range []int64{0, 1, 1000} {
			rs, err := ParseRange(s, size)
			if err != nil {
				continue
			}
			for _, r := range rs {
				if r.Start < 0 || r.Length <= 0 || r.Start+r.Length > size {
					t.Fatalf("ParseRange(%q, %d) gave %+v", s, size, r)
				}
			}
		}
	})
}
