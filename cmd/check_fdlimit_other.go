//go:build !unix

package cmd

// openFileLimit: no RLIMIT_NOFILE to tell here.
func openFileLimit() (uint64, bool) { return 0, false }
