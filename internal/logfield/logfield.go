// Package logfield bounds what a client's request can put in one log
// line. Log lines are written for requests nobody signed in for (a
// refusal, a name that does not parse), and a request can carry some
// 20 KiB of path and query: written whole as the repository, the
// reason quoting the name and the URI, one anonymous request made a
// 20 KiB line from a 7 KiB request, so whoever could reach the server
// could fill its log disk at three times the bytes they sent.
package logfield

import (
	"strconv"

	"go.uber.org/zap"
)

// Max is the most bytes of one value a log line keeps. Every value a
// well-formed request carries fits (repository names are at most 255
// bytes, tags 128, digests 135); past it the value is cut and says by
// how much, so a reader still sees what the request was.
const Max = 1024

// Bound is s cut to Max bytes, with what was left out counted.
func Bound(s string) string {
	if len(s) <= Max {
		return s
	}
	return s[:Max] + "...(" + strconv.Itoa(len(s)-Max) + " more bytes)"
}

// String is zap.String of key and s cut to Max bytes.
func String(key, s string) zap.Field { return zap.String(key, Bound(s)) }

// Strings is zap.Strings with each value cut to Max bytes and at most
// maxValues values kept.
func Strings(key string, ss []string) zap.Field {
	const maxValues = 16
	out := make([]string, 0, min(len(ss), maxValues+1))
	for i, s := range ss {
		if i == maxValues {
			out = append(out, "...("+strconv.Itoa(len(ss)-maxValues)+" more)")
			break
		}
		out = append(out, Bound(s))
	}
	return zap.Strings(key, out)
}
