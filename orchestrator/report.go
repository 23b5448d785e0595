package orchestrator

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/fleetcert/fleetcert/inventory"
)

// SchemaVersion is the version of the shape of every JSON document
// fleetcert writes (reports, check, facts, status, inventory list).
const SchemaVersion = 1

// FleetReport is a whole run.
type FleetReport struct {
	// SchemaVersion is the version of this report's shape (see
	// SchemaVersion); it changes only when a field changes meaning or
	// goes away.
	SchemaVersion int              `json:"schemaVersion"`
	RunID         string           `json:"runId"`
	Command       string           `json:"command"`
	DryRun        bool             `json:"dryRun"`
	Started       time.Time        `json:"started"`
	Finished      time.Time        `json:"finished"`
	Stopped       string           `json:"stopped,omitempty"` // why clusters were not started
	Waves         []WaveReport     `json:"waves"`
	Clusters      []*ClusterReport `json:"clusters"`
}

// WaveReport is when a wave ran and what it held.
type WaveReport struct {
	Index    int       `json:"index"`
	Clusters []string  `json:"clusters"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
}

// Count returns how many clusters ended with outcome.
func (r *FleetReport) Count(outcome string) int {
	n := 0
	for _, c := range r.Clusters {
		if c.Outcome == outcome {
			n++
		}
	}
	return n
}

// sortByWaves lists clusters in rollout order, not in the order they
// happened to finish.
func (r *FleetReport) sortByWaves(waves [][]inventory.Cluster) {
	pos := map[string]int{}
	for _, w := range waves {
		for _, c := range w {
			pos[c.Name] = len(pos)
		}
	}
	sort.SliceStable(r.Clusters, func(i, j int) bool { return pos[r.Clusters[i].Cluster] < pos[r.Clusters[j].Cluster] })
}

// Cluster outcomes in reports.
const (
	OutcomeDone        = "done"
	OutcomeFailed      = "failed"
	OutcomeRefused     = "refused"
	OutcomeAbandoned   = "abandoned"
	OutcomePlanned     = "planned" // dry-run
	OutcomeNotRun      = "not-started"
	OutcomeInterrupted = "interrupted" // stopped by a signal; a rerun resumes
)

// ClusterReport is what happened to one cluster.
type ClusterReport struct {
	Cluster    string       `json:"cluster"`
	Outcome    string       `json:"outcome"`
	Error      string       `json:"error,omitempty"`
	RunID      string       `json:"runId"`
	Resumed    bool         `json:"resumed,omitempty"`
	Mode       Mode         `json:"mode,omitempty"`
	OldHash    string       `json:"oldHash,omitempty"`
	TargetHash string       `json:"targetHash,omitempty"`
	Snapshot   string       `json:"snapshot,omitempty"`
	Staged     []string     `json:"stagedFiles,omitempty"`
	Started    time.Time    `json:"started"`
	Finished   time.Time    `json:"finished"`
	Nodes      []NodeReport `json:"nodes"`
	Changes    []Change     `json:"changes"`
	Phases     []PhaseSpan  `json:"phases"`
	Warnings   []string     `json:"warnings,omitempty"`
	// Export holds what --export writes; never in JSON reports.
	Export *Export `json:"-"`
}

// NodeReport is what happened to one node.
type NodeReport struct {
	Node     string        `json:"node"`
	Role     string        `json:"role"`
	Outcome  string        `json:"outcome"` // restarted, already-done, untouched, failed
	Files    []string      `json:"filesChanged,omitempty"`
	Duration time.Duration `json:"durationNs"`
	Error    string        `json:"error,omitempty"`
}

// Change is one mutation a run made, or with --dry-run would make.
type Change struct {
	Node  string `json:"node"`
	Phase string `json:"phase"`
	What  string `json:"what"`
}

// PhaseSpan is when one phase of a cluster's run started and ended.
type PhaseSpan struct {
	Phase    string    `json:"phase"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
}

// Export is a cluster's new trust material for the other holders of the
// old one (CI kubeconfigs, provisioning templates).
type Export struct {
	ServerCA   []byte
	Hash       string
	Token      string // server/token; only with ExportTokens
	AgentToken string
}

// refusedError is a safety check that stopped a cluster before anything on
// it changed (exit 3).
type refusedError struct {
	Cluster  string
	Problems []string
}

func (e *refusedError) Error() string {
	return fmt.Sprintf("cluster %s refused, nothing changed:\n  - %s", e.Cluster, strings.Join(e.Problems, "\n  - "))
}

// outcomeOf classifies a run's error for the report.
func outcomeOf(err error, dryRun bool) string {
	var refused *refusedError
	var held *lockHeldError
	switch {
	case err == nil && dryRun:
		return OutcomePlanned
	case err == nil:
		return OutcomeDone
	case errors.As(err, &refused), errors.As(err, &held):
		return OutcomeRefused
	case errors.Is(err, context.Canceled):
		return OutcomeInterrupted
	}
	return OutcomeFailed
}

// NewRunID makes a run id: sortable by time, unique enough across
// controllers, safe in file names.
func NewRunID(now time.Time) string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b)
}
