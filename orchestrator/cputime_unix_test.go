//go:build unix

package orchestrator

import (
	"syscall"
	"time"
)

// cpuTime is the CPU time (user and system) the process used so far: on a
// shared machine, the measure that other load does not inflate.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
