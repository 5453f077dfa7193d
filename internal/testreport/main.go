// Command testreport reads `go test -json` and prints what `go test`
// prints without -json (an ok or FAIL line a package, the output of
// failures), then which tests were skipped and why. A green run on a
// machine without the clients, the conformance suite or PostgreSQL would
// otherwise not say that those tests did not run: go test shows nothing of
// a passing package but its ok line.
//
//	go test -race -timeout 75m -json ./... | go run ./internal/testreport
//
// It exits 1 when a test, a package or a build failed, or when the input
// held no test result at all.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// event is one line of `go test -json` (cmd/test2json), with the build
// events go test adds.
type event struct {
	Action     string
	Package    string
	ImportPath string // build-output, build-fail
	Test       string
	Elapsed    float64
	Output     string
}

// keepLines bounds the output kept per test and per package: enough for
// a failure's story, not all the logs of a long passing test.
const keepLines = 400

type report struct {
	out      io.Writer
	lines    map[string][]string  // package + "\x00" + test -> its output so far
	messages map[string]*messages // the same key -> its t.Log/t.Error lines, kept past keepLines
	failures []string             // "package Test" and the messages of each failed test
	skips    map[string][]string  // reason -> "package Test"
	module   string               // the module's path, left out of package names in the summary
	failed   bool
	finished int // packages with a result
}

func main() {
	r := newReport(os.Stdout)
	if b, err := os.ReadFile("go.mod"); err == nil {
		r.module = modulePath(string(b))
	}
	if err := r.read(os.Stdin); err != nil {
		fmt.Fprintln(os.Stderr, "testreport:", err)
		os.Exit(1)
	}
	r.summary()
	if r.failed || r.finished == 0 {
		os.Exit(1)
	}
}

func newReport(out io.Writer) *report {
	return &report{out: out, lines: map[string][]string{}, messages: map[string]*messages{}, skips: map[string][]string{}}
}

// modulePath is the path a go.mod declares.
func modulePath(gomod string) string {
	for _, l := range strings.Split(gomod, "\n") {
		if p, ok := strings.CutPrefix(strings.TrimSpace(l), "module "); ok {
			return strings.Trim(strings.TrimSpace(p), `"`)
		}
	}
	return ""
}

func (r *report) read(in io.Reader) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			// Not an event (go test's own messages): pass it on.
			fmt.Fprintln(r.out, sc.Text())
			continue
		}
		r.handle(e)
	}
	return sc.Err()
}

func (r *report) handle(e event) {
	key := e.Package + "\x00" + e.Test
	switch e.Action {
	case "build-output":
		fmt.Fprint(r.out, e.Output)
	case "build-fail":
		r.failed = true
	case "output":
		l := append(r.lines[key], e.Output)
		if len(l) > keepLines {
			l = l[len(l)-keepLines:]
		}
		r.lines[key] = l
		if r.messages[key] == nil {
			r.messages[key] = &messages{}
		}
		r.messages[key].add(e.Output)
	case "skip":
		if e.Test == "" {
			fmt.Fprintf(r.out, "?   \t%s\t[no test files]\n", e.Package)
		}
		if e.Test != "" {
			reason := skipReason(r.lines[key])
			r.skips[reason] = append(r.skips[reason], strings.TrimPrefix(e.Package, r.module+"/")+" "+e.Test)
		}
		delete(r.lines, key)
		delete(r.messages, key)
	case "pass":
		delete(r.lines, key)
		delete(r.messages, key)
		if e.Test == "" {
			r.finished++
			fmt.Fprintf(r.out, "ok  \t%s\t%.3fs\n", e.Package, e.Elapsed)
		}
	case "fail":
		r.failed = true
		if e.Test != "" {
			r.failures = append(r.failures, strings.TrimPrefix(e.Package, r.module+"/")+" "+e.Test+"\n"+r.messages[key].String())
			delete(r.messages, key)
			return // printed with its package, in order
		}
		r.finished++
		// The failed tests' output, then what the package printed
		// outside any test (a panic, TestMain).
		var keys []string
		for k := range r.lines {
			if pkg, _, _ := strings.Cut(k, "\x00"); pkg == e.Package {
				keys = append(keys, k)
			}
		}
		slices.Sort(keys)
		for _, k := range keys {
			if _, test, _ := strings.Cut(k, "\x00"); test != "" && !failedTest(r.lines[k]) {
				continue
			}
			for _, l := range r.lines[k] {
				if l == "FAIL\n" || strings.HasPrefix(l, "FAIL\t") {
					continue // go test's own package line; ours follows
				}
				fmt.Fprint(r.out, l)
			}
			delete(r.lines, k)
		}
		fmt.Fprintf(r.out, "FAIL\t%s\t%.3fs\n", e.Package, e.Elapsed)
	}
}

// failedTest reports whether a test's output ends in its failure (a
// parent of a failed subtest fails too; both are shown).
func failedTest(lines []string) bool {
	for _, l := range lines {
		if strings.Contains(l, "--- FAIL") {
			return true
		}
	}
	return false
}

// skipReason is the message of t.Skip: the output lines before
// "--- SKIP", without the file:line go test puts before it.
func skipReason(lines []string) string {
	var msg []string
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- ") {
			continue
		}
		if _, after, ok := strings.Cut(t, ": "); ok && strings.Contains(t[:len(t)-len(after)], ".go:") {
			t = after
		}
		msg = append(msg, t)
	}
	if len(msg) == 0 {
		return "(no reason given)"
	}
	return msg[len(msg)-1]
}

// Bounds of what the closing list of failures keeps of a test's output:
// the message lines (t.Log, t.Error, t.Fatal: "file.go:12: ..."), a few
// lines of each multi-line message, the first and the last ones of a
// long test (an early t.Error, a t.Fatal near the end).
const (
	keepMessages     = 20 // at each end
	keepContinuation = 2
	keepLineBytes    = 300
)

// messages is what the closing list keeps of one test's output.
type messages struct {
	head, tail []string
	dropped    int
	cont       int // continuation lines kept of the last message
}

// add keeps an output line when it is a message or one of the first
// lines of a multi-line one. A CI page that shows only the end of a run
// still shows why a test failed, even when the test logged more than
// keepLines after it.
func (m *messages) add(line string) {
	if len(line) > keepLineBytes {
		line = line[:keepLineBytes] + " ...\n"
	}
	switch {
	case isMessage(line):
		m.cont = 0
	case strings.HasPrefix(line, "        ") && m.cont < keepContinuation && len(m.head)+len(m.tail) > 0:
		m.cont++
	default:
		return
	}
	if len(m.head) < keepMessages && m.dropped == 0 && len(m.tail) == 0 {
		m.head = append(m.head, line)
		return
	}
	m.tail = append(m.tail, line)
	if len(m.tail) > keepMessages {
		m.tail = m.tail[1:]
		m.dropped++
	}
}

func (m *messages) String() string {
	if m == nil {
		return ""
	}
	s := strings.Join(m.head, "")
	if m.dropped > 0 {
		s += fmt.Sprintf("        ... %d lines ...\n", m.dropped)
	}
	return s + strings.Join(m.tail, "")
}

// isMessage reports whether a line starts a t.Log or t.Error message:
// four spaces, a file name, a line number.
func isMessage(line string) bool {
	t, ok := strings.CutPrefix(line, "    ")
	if !ok || strings.HasPrefix(t, " ") {
		return false
	}
	loc, _, ok := strings.Cut(t, ": ")
	file, num, ok2 := strings.Cut(loc, ".go:")
	return ok && ok2 && file != "" && !strings.Contains(file, " ") && num != "" && strings.Trim(num, "0123456789") == ""
}

// summary lists the skipped tests by reason, most first, then the failed
// tests with their messages, last so that the end of a run says why.
func (r *report) summary() {
	defer r.failureSummary()
	if len(r.skips) == 0 {
		fmt.Fprintln(r.out, "skipped: none")
		return
	}
	reasons := make([]string, 0, len(r.skips))
	n := 0
	for reason, tests := range r.skips {
		reasons = append(reasons, reason)
		n += len(tests)
	}
	slices.SortFunc(reasons, func(a, b string) int {
		if d := len(r.skips[b]) - len(r.skips[a]); d != 0 {
			return d
		}
		return strings.Compare(a, b)
	})
	fmt.Fprintf(r.out, "\nskipped %d tests; they did not run:\n", n)
	for _, reason := range reasons {
		tests := r.skips[reason]
		slices.Sort(tests)
		fmt.Fprintf(r.out, "  %s (%d):\n    %s\n", reason, len(tests), strings.Join(tests, "\n    "))
	}
}

func (r *report) failureSummary() {
	if len(r.failures) == 0 {
		return
	}
	fmt.Fprintf(r.out, "\nfailed %d tests; their messages:\n", len(r.failures))
	for _, f := range r.failures {
		fmt.Fprintln(r.out, "  "+strings.TrimRight(f, "\n"))
	}
}
