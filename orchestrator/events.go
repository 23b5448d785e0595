package orchestrator

import (
	"context"
	"log/slog"
	"time"
)

// Event is one thing that happened during a run, for progress views, logs
// and reports. Node and Phase are empty for cluster- or run-wide events.
type Event struct {
	Time    time.Time `json:"time"`
	RunID   string    `json:"runId"`
	Cluster string    `json:"cluster,omitempty"`
	Node    string    `json:"node,omitempty"`
	Phase   string    `json:"phase,omitempty"`
	Kind    EventKind `json:"kind"`
	Msg     string    `json:"msg"`
}

// EventKind says what an event is about.
type EventKind string

const (
	EventPhase   EventKind = "phase"   // a phase started
	EventChange  EventKind = "change"  // a mutation is being made (or, dry-run, would be)
	EventInfo    EventKind = "info"    // progress worth showing
	EventWarn    EventKind = "warning" // something an operator should read
	EventGate    EventKind = "gate"    // a health gate passed
	EventFail    EventKind = "fail"    // a phase or gate failed
	EventCluster EventKind = "cluster" // a cluster finished (Msg holds the outcome)
	EventWave    EventKind = "wave"    // a wave starts (Msg: "wave I of N, K clusters")
)

// Sink receives events. Implementations must be safe for concurrent use:
// clusters run in parallel.
type Sink interface {
	Emit(Event)
}

// LogSink writes events to a slog logger, one line each, with the run id in
// every line so that logs of scheduled runs can be correlated.
type LogSink struct {
	Log *slog.Logger
}

func (s LogSink) Emit(e Event) {
	attrs := []any{"run", e.RunID}
	if e.Cluster != "" {
		attrs = append(attrs, "cluster", e.Cluster)
	}
	if e.Node != "" {
		attrs = append(attrs, "node", e.Node)
	}
	if e.Phase != "" {
		attrs = append(attrs, "phase", e.Phase)
	}
	level := slog.LevelInfo
	switch e.Kind {
	case EventWarn:
		level = slog.LevelWarn
	case EventFail:
		level = slog.LevelError
	}
	s.Log.Log(context.Background(), level, e.Msg, attrs...)
}
