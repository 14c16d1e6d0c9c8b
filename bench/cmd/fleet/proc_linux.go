package main

import (
	"os/exec"
	"syscall"
)

// setDeathSignal makes the kernel kill the child if the bench dies
// without cleaning up.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
