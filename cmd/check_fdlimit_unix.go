//go:build unix

package cmd

import "syscall"

// openFileLimit is the process's RLIMIT_NOFILE, as it stands after the Go
// runtime raised the soft limit to the hard one at start: what `ulimit
// -Hn` allows, unless something lowered it since. ok is false when it
// cannot be told.
func openFileLimit() (limit uint64, ok bool) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, false
	}
	return uint64(l.Cur), true
}
