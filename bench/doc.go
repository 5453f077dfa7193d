// Package bench holds the registry's throughput benchmarks: push
// (monolithic and chunked), warm GET and small-manifest rates, each through
// real HTTP onto a real disk, and each reporting its ratio to a limit
// measured in the same run. It has no code outside its _test.go files; see
// README.md for how to run it and what every figure means. Whole-process
// figures (the built caddy binary, peak RSS) come from cmd/ocibench.
package bench
