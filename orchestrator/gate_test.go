package orchestrator

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestGatePassesWhenProbeTurnsOK(t *testing.T) {
	n := 0
	err := pollGate(context.Background(), "c/s1", "ready", time.Second, time.Millisecond, func(context.Context) (bool, string, error) {
		n++
		if n < 3 {
			return false, "", errors.New("connection refused")
		}
		return true, "ok", nil
	})
	if err != nil || n != 3 {
		t.Fatalf("err=%v after %d probes", err, n)
	}
}

func TestGateReportsWhatItSawAtDeadline(t *testing.T) {
	err := pollGate(context.Background(), "c/s1", "serves new CA", 30*time.Millisecond, 5*time.Millisecond, func(context.Context) (bool, string, error) {
		return false, "hash abc", nil
	})
	var ge *gateError
	if !errors.As(err, &ge) {
		t.Fatalf("want gateError, got %v", err)
	}
	for _, want := range []string{"c/s1", "serves new CA", "hash abc"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q lacks %q", err, want)
		}
	}
}

func TestGateStopsWhenCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := pollGate(ctx, "n", "g", time.Hour, time.Millisecond, func(context.Context) (bool, string, error) { return false, "", nil })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
}
