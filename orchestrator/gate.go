package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// probeFunc looks once at a node. ok means the gate may pass; saw describes what
// was observed either way, for the report when the gate times out.
type probeFunc func(ctx context.Context) (ok bool, saw string, err error)

// gateError is a gate that did not pass by its deadline. It names the node,
// the gate and the last thing the probe saw.
type gateError struct {
	Node    string
	Gate    string
	Waited  time.Duration
	LastSaw string
	LastErr error
}

func (e *gateError) Error() string {
	msg := fmt.Sprintf("%s: gate %q did not pass within %s", e.Node, e.Gate, e.Waited.Round(time.Second))
	if e.LastSaw != "" {
		msg += "; last saw: " + e.LastSaw
	}
	if e.LastErr != nil {
		msg += "; last error: " + e.LastErr.Error()
	}
	return msg
}

func (e *gateError) Unwrap() error { return e.LastErr }

// pollGate polls probe every interval until it passes, the deadline passes, or
// ctx is done. It is the one retry loop fleetcert has: every wait on a node
// goes through it, so every wait has a deadline and a report of what it saw.
// A probe error counts as "not yet" (a restarting node refuses connections)
// and is kept for the report.
func pollGate(ctx context.Context, node, gate string, deadline, interval time.Duration, probe probeFunc) error {
	start := time.Now()
	gctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	ge := &gateError{Node: node, Gate: gate}
	for {
		ok, saw, err := probe(gctx)
		if ok && err == nil {
			return nil
		}
		var fatal *fatalProbe
		if errors.As(err, &fatal) {
			ge.LastSaw, ge.LastErr, ge.Waited = saw, fatal.err, time.Since(start)
			return ge
		}
		if saw != "" {
			ge.LastSaw = saw
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			ge.LastErr = err
		}
		select {
		case <-gctx.Done():
			if err := ctx.Err(); err != nil {
				return err // interrupted: not a gate failure
			}
			ge.Waited = time.Since(start)
			return ge
		case <-time.After(interval):
		}
	}
}

// fatalProbe marks a probe result that waiting cannot change (e.g. an agent
// logging a token mismatch): the gate fails at once.
type fatalProbe struct{ err error }

func (f *fatalProbe) Error() string { return f.err.Error() }

// stopWaiting wraps err so that Gate stops waiting.
func stopWaiting(err error) error { return &fatalProbe{err} }
