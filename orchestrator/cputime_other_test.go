//go:build !unix

package orchestrator

import "time"

// cpuTime is not measured here.
func cpuTime() time.Duration { return 0 }
