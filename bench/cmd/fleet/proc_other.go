//go:build !linux

package main

import "os/exec"

// setDeathSignal does nothing where the kernel cannot kill a child with
// its parent; the bench's own cleanup still kills every child it started.
func setDeathSignal(*exec.Cmd) {}
