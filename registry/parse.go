package registry

// Parsers for what a client puts in a URL or a header. They are exported for
// reuse (the Caddy module, the auth front) and fuzzed: none of them panics,
// and everything they accept satisfies the grammar they claim.

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/cache"
)

// MaxNameLength is the longest repository name accepted (the spec: fewer
// than 256 characters).
const MaxNameLength = authscope.MaxNameLength

var tagRE = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)

// Errors returned by the parsers.
var (
	ErrNameInvalid      = errors.New("invalid repository name")
	ErrTagInvalid       = errors.New("invalid tag")
	ErrRangeInvalid     = errors.New("invalid range")
	ErrRangeUnsatisfied = errors.New("range not satisfiable")
	ErrReferenceInvalid = errors.New("invalid reference")
	ErrRangeUnit        = errors.New("range unit is not bytes")
)

// ParseName checks a repository name against the spec's grammar
// (`[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`,
// at most MaxNameLength characters) and returns it unchanged.
func ParseName(s string) (string, error) {
	if !authscope.ValidName(s) {
		return "", fmt.Errorf("%w: %q", ErrNameInvalid, s)
	}
	return s, nil
}

// ValidTag reports whether s is a tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
func ValidTag(s string) bool {
	return len(s) <= 128 && tagRE.MatchString(s)
}

// Reference is the <reference> of a manifest URL: a tag or a digest, never
// both.
type Reference struct {
	Tag    string
	Digest cache.Digest
}

// IsDigest reports whether the reference is a digest.
func (r Reference) IsDigest() bool { return !r.Digest.IsZero() }

func (r Reference) String() string {
	if r.IsDigest() {
		return r.Digest.String()
	}
	return r.Tag
}

// ParseReference parses a manifest reference. Anything containing a colon
// is a digest (tags cannot contain one) and must pass cache.ParseDigest;
// the error then wraps cache.ErrDigestInvalid or cache.ErrDigestUnsupported.
// Otherwise it must be a tag (ErrTagInvalid).
func ParseReference(s string) (Reference, error) {
	if strings.Contains(s, ":") {
		d, err := cache.ParseDigest(s)
		if err != nil {
			return Reference{}, err
		}
		return Reference{Digest: d}, nil
	}
	if !ValidTag(s) {
		return Reference{}, fmt.Errorf("%w: %q", ErrTagInvalid, s)
	}
	return Reference{Tag: s}, nil
}

// ParseContentRange parses the Content-Range header of an upload chunk:
// "<start>-<end>", inclusive, as the spec writes it. For clients that send
// the RFC 9110 form, "bytes <start>-<end>/<size or *>" and "bytes=<start>-<end>"
// are accepted too. It returns start and end with 0 <= start <= end.
func ParseContentRange(s string) (start, end int64, err error) {
	v := strings.TrimSpace(s)
	if rest, ok := strings.CutPrefix(v, "bytes"); ok {
		rest = strings.TrimLeft(rest, " =")
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			total := rest[i+1:]
			if total != "*" {
				if _, err := parseDecimal(total); err != nil {
					return 0, 0, fmt.Errorf("%w: %q", ErrRangeInvalid, s)
				}
			}
			rest = rest[:i]
		}
		v = rest
	}
	a, b, ok := strings.Cut(v, "-")
	if !ok {
		return 0, 0, fmt.Errorf("%w: %q", ErrRangeInvalid, s)
	}
	start, err1 := parseDecimal(a)
	end, err2 := parseDecimal(b)
	if err1 != nil || err2 != nil || end < start {
		return 0, 0, fmt.Errorf("%w: %q", ErrRangeInvalid, s)
	}
	return start, end, nil
}

// ByteRange is one satisfiable range of a Range header, resolved against
// the size of the content: the bytes [Start, Start+Length).
type ByteRange struct {
	Start, Length int64
}

// ParseRange parses a Range request header ("bytes=0-99,200-", "bytes=-500")
// against a representation of size bytes. It returns the satisfiable
// ranges; ErrRangeUnsatisfied when the header is well formed but no range
// overlaps the content; ErrRangeInvalid when it is malformed (including a
// range whose last byte precedes its first, which net/http also refuses).
// A header in a unit other than bytes returns ErrRangeUnit: RFC 9110 says
// to ignore it and serve the full content.
func ParseRange(s string, size int64) ([]ByteRange, error) {
	if s == "" {
		return nil, nil
	}
	spec, ok := strings.CutPrefix(s, "bytes=")
	if !ok {
		if unit, _, found := strings.Cut(s, "="); found && strings.TrimSpace(unit) != "" && !strings.EqualFold(strings.TrimSpace(unit), "bytes") {
			return nil, ErrRangeUnit
		}
		return nil, fmt.Errorf("%w: %q", ErrRangeInvalid, s)
	}
	var out []ByteRange
	seen := false
	for part := range strings.SplitSeq(spec, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		seen = true
		a, b, ok := strings.Cut(part, "-")
		if !ok {
			return nil, fmt.Errorf("%w: %q", ErrRangeInvalid, s)
		}
		a, b = strings.TrimSpace(a), strings.TrimSpace(b)
		if a == "" {
			// suffix range: the last n bytes
			n, err := parseDecimal(b)
			if err != nil {
				return nil, fmt.Errorf("%w: %q", ErrRangeInvalid, s)
			}
			if n == 0 || size == 0 {
				continue
			}
			n = min(n, size)
			out = append(out, ByteRange{Start: size - n, Length: n})
			continue
		}
		first, err := parseDecimal(a)
		if err != nil {
			return nil, fmt.Errorf("%w: %q", ErrRangeInvalid, s)
		}
		last := size - 1
		if b != "" {
			last, err = parseDecimal(b)
			if err != nil || last < first {
				return nil, fmt.Errorf("%w: %q", ErrRangeInvalid, s)
			}
		}
		if first >= size {
			continue
		}
		last = min(last, size-1)
		out = append(out, ByteRange{Start: first, Length: last - first + 1})
	}
	if !seen {
		return nil, fmt.Errorf("%w: %q", ErrRangeInvalid, s)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: %q", ErrRangeUnsatisfied, s)
	}
	return out, nil
}

// parseDecimal parses a non-negative decimal integer without sign or
// spaces, rejecting overflow.
func parseDecimal(s string) (int64, error) {
	if s == "" || len(s) > 18 {
		return 0, strconv.ErrSyntax
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, strconv.ErrSyntax
		}
	}
	return strconv.ParseInt(s, 10, 64)
}
