package chserver

import "syscall"

// sysProcAttr has the kernel kill the server when the process that started
// it dies (strictly: when the starting OS thread exits, which for Go
// programs is when the process dies, as long as no goroutine that locked its
// thread started the server).
func sysProcAttr(detach bool) *syscall.SysProcAttr {
	if detach {
		return &syscall.SysProcAttr{Setpgid: true}
	}
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
