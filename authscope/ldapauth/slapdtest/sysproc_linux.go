package slapdtest

import "syscall"

// sysProcAttr kills slapd when the test binary dies without stopping it
// (go test's timeout), so that no server outlives its tests.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
