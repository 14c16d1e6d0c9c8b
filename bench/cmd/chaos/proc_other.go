//go:build !linux

package main

import (
	"errors"
	"os/exec"
	"time"
)

// setDeathSignal does nothing where the kernel cannot kill a child with
// its parent; the suite's own cleanup still kills every child it started.
func setDeathSignal(*exec.Cmd) {}

// processCPU is only implemented on Linux.
func processCPU(int) (time.Duration, error) {
	return 0, errors.New("process CPU time is only read on Linux")
}
