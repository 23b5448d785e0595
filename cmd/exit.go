package cmd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
)

// Exit codes, one table for every command; when several apply the first in
// this order wins: usage, refused, interrupted, failed, unreachable.
const (
	ExitOK          = 0
	ExitFailed      = 1   // a cluster failed or was left unfinished; check found a problem
	ExitUsage       = 2   // bad usage, inventory or input; nothing touched
	ExitRefused     = 3   // refused by a safety check; nothing touched
	ExitUnreachable = 4   // some nodes could not be reached; the rest were handled
	ExitSIGINT      = 130 // interrupted by SIGINT; state saved
	ExitSIGTERM     = 143 // interrupted by SIGTERM; state saved
)

// exitError attaches an exit code to an error. silent errors have already
// been reported to the user in the command's own output.
type exitError struct {
	code   int
	err    error
	silent bool
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageError(err error) error { return &exitError{code: ExitUsage, err: err} }

func usageErrorf(format string, args ...any) error {
	return usageError(fmt.Errorf(format, args...))
}

// withCode reports err with code; a nil err with a non-zero code is a result
// already printed (e.g. a check that found expiring certificates).
func withCode(code int, err error) error {
	if code == ExitOK && err == nil {
		return nil
	}
	if err == nil {
		return &exitError{code: code, err: fmt.Errorf("exit status %d", code), silent: true}
	}
	return &exitError{code: code, err: err}
}

func exitCode(err error) int {
	var e *exitError
	if errors.As(err, &e) {
		return e.code
	}
	// cobra's own errors (unknown command or flag, bad arguments) are usage errors.
	return ExitUsage
}

// worst returns the exit code that wins when several apply.
func worst(codes ...int) int {
	rank := map[int]int{ExitUsage: 6, ExitRefused: 5, ExitSIGINT: 4, ExitSIGTERM: 4, ExitFailed: 3, ExitUnreachable: 2, ExitOK: 0}
	best := ExitOK
	for _, c := range codes {
		if rank[c] > rank[best] {
			best = c
		}
	}
	return best
}

// interruptCode is 143 when the run was stopped by SIGTERM and 130
// otherwise (SIGINT), following the shell convention of 128+signal.
func interruptCode(ctx context.Context) int {
	if sig, ok := context.Cause(ctx).(interface{ Signal() os.Signal }); ok && sig.Signal() == syscall.SIGTERM {
		return ExitSIGTERM
	}
	return ExitSIGINT
}
