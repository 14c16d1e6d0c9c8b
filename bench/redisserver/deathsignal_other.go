//go:build !linux

package redisserver

import "os/exec"

// setDeathSignal does nothing where the kernel cannot kill a child with
// its parent: callers stop the server themselves.
func setDeathSignal(*exec.Cmd) {}
