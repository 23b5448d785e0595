package orchestrator

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"time"

	"github.com/fleetcert/fleetcert/k3s"
	"github.com/fleetcert/fleetcert/remote"
)

// Files in a cluster's fleetcert directory on its primary server. The run
// state lives on the cluster itself, not on the controller, so that any
// controller can resume a run another one left unfinished.
const (
	runStateFile  = "run.json"
	lastRunFile   = "last-run.json"
	stateFileMode = 0o600
)

// NodeStep is how far a node got in a run.
type NodeStep string

const (
	StepRewritten NodeStep = "tokens-rewritten"
	StepRestarted NodeStep = "restarted"
	StepDone      NodeStep = "done"
)

// RunState is a cluster's record of an unfinished (or, in last-run.json,
// its last finished) run: enough to resume with the same target instead of
// making new material.
type RunState struct {
	RunID      string    `json:"runId"`
	Command    string    `json:"command"`
	Mode       string    `json:"mode"`
	Started    time.Time `json:"started"`
	Updated    time.Time `json:"updated"`
	OldHash    string    `json:"oldHash"`
	TargetHash string    `json:"targetHash"`
	StageDir   string    `json:"stageDir,omitempty"`
	Loaded     bool      `json:"loaded"` // new material saved to the datastore
	Snapshot   string    `json:"snapshot,omitempty"`
	// Retired are the SHA-256 fingerprints of the roots a completing run
	// (rotate-ca --complete) retires: nothing served may chain to them.
	Retired []string            `json:"retired,omitempty"`
	Nodes   map[string]NodeStep `json:"nodes"`
	Outcome string              `json:"outcome,omitempty"` // done, failed, abandoned; empty while unfinished
	Error   string              `json:"error,omitempty"`
}

// Finished reports whether the run reached an outcome.
func (s *RunState) Finished() bool { return s.Outcome != "" }

// readState parses the state files found in a primary's facts snapshot.
func readState(l k3s.Layout, snap *k3s.Snapshot) (current, last *RunState, err error) {
	dir := l.FleetcertDir()
	for name, dst := range map[string]**RunState{runStateFile: &current, lastRunFile: &last} {
		f, ok := snap.Files[path.Join(dir, name)]
		if !ok {
			continue
		}
		var s RunState
		if err := json.Unmarshal(f.Data, &s); err != nil {
			return nil, nil, fmt.Errorf("run state %s: %w", path.Join(dir, name), err)
		}
		*dst = &s
	}
	if current != nil && current.Finished() {
		current = nil
	}
	return current, last, nil
}

// saveState writes the run state to the primary, atomically.
func saveState(ctx context.Context, h remote.Host, l k3s.Layout, s *RunState, now time.Time) error {
	s.Updated = now
	if err := writeJSON(ctx, h, path.Join(l.FleetcertDir(), runStateFile), s); err != nil {
		return fmt.Errorf("save run state: %w", err)
	}
	return nil
}

// writeJSON writes v as indented JSON to p on h, atomically, mode 0600.
func writeJSON(ctx context.Context, h remote.Host, p string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return h.WriteFile(ctx, p, append(data, '\n'), stateFileMode)
}

// finishState records the outcome as the cluster's last run and removes
// the unfinished-run file, so the next run starts fresh.
func finishState(ctx context.Context, h remote.Host, l k3s.Layout, s *RunState, now time.Time) error {
	s.Updated = now
	dir := l.FleetcertDir()
	if err := writeJSON(ctx, h, path.Join(dir, lastRunFile), s); err != nil {
		return fmt.Errorf("save last run: %w", err)
	}
	res, err := h.Run(ctx, "rm -f -- "+remote.Quote(path.Join(dir, runStateFile)), nil)
	if err != nil {
		return err
	}
	return res.Err()
}

// caRecordFile is the cluster's record of its last CA rotation. It is kept
// apart from the run state, which every later run (rotate, rotate-sa-key)
// replaces: rotate-ca --complete measures its soak time from it.
const caRecordFile = "ca-rotation.json"

// CARecord is a cluster's last CA rotation, as its primary records it.
type CARecord struct {
	RunID      string    `json:"runId"`
	Mode       Mode      `json:"mode"`
	TargetHash string    `json:"targetHash"`
	Finished   time.Time `json:"finished"`
	// Completed is when rotate-ca --complete retired the old roots.
	Completed time.Time `json:"completed,omitzero"`
}

// readCARecord reads the record from a primary's facts snapshot; nil when
// there is none.
func readCARecord(l k3s.Layout, snap *k3s.Snapshot) (*CARecord, error) {
	p := path.Join(l.FleetcertDir(), caRecordFile)
	f, ok := snap.Files[p]
	if !ok {
		return nil, nil
	}
	var rec CARecord
	if err := json.Unmarshal(f.Data, &rec); err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return &rec, nil
}

// saveCARecord writes the record to the primary, atomically.
func saveCARecord(ctx context.Context, h remote.Host, l k3s.Layout, rec *CARecord) error {
	if err := writeJSON(ctx, h, path.Join(l.FleetcertDir(), caRecordFile), rec); err != nil {
		return fmt.Errorf("save CA rotation record: %w", err)
	}
	return nil
}
