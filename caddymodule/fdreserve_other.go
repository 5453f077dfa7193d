//go:build !linux

package caddymodule

// fdsFree reports true: only Linux is asked (fdreserve_linux.go).
func fdsFree(int) bool { return true }
