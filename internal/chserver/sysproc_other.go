//go:build !linux

package chserver

import "syscall"

// sysProcAttr: only Linux can tie the server's life to ours; elsewhere an
// interrupted test run may leave a server behind (its directory names it).
func sysProcAttr(detach bool) *syscall.SysProcAttr { return nil }
