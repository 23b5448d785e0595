package orchestrator

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/pki"
)

// Commands that change clusters.
const (
	CmdRotateCA    = "rotate-ca"
	CmdRotateSAKey = "rotate-sa-key"
)

// Mode is how a CA rotation makes its new material (docs/k3s.md#rotation-kinds).
type Mode string

const (
	// ModeCrossSign: default or previously cross-signed CAs get new roots
	// cross-signed by the old ones. Join tokens change.
	ModeCrossSign Mode = "cross-sign"
	// ModeCustom: new cluster CAs under the operator's root (or
	// intermediate). The root, hence every token, stays.
	ModeCustom Mode = "custom"
	// ModeNewRoot: --force, an unrelated root. Tokens change, pods must be
	// restarted; the etcd CAs are left as they are.
	ModeNewRoot Mode = "new-root"
	// ModeServiceKey: rotate-sa-key, only service.key. Servers restart,
	// agents are untouched.
	ModeServiceKey Mode = "service-key"
)

// CAInput is the operator's own CA material for custom-CA clusters. The
// keys never leave the controller.
type CAInput struct {
	Root            *x509.Certificate
	RootKey         crypto.Signer
	Intermediate    *x509.Certificate
	IntermediateKey crypto.Signer
}

// Given reports whether the operator supplied a root.
func (in CAInput) Given() bool { return in.Root != nil }

// Options configure a run of rotate-ca or rotate-sa-key.
type Options struct {
	Command string
	// RunID names this run; a resumed run takes the id of the run it
	// continues.
	RunID  string
	DryRun bool
	// Force loads material that does not chain to the current root
	// (rotate-ca --force): a new unrelated root, or the operator's.
	Force bool
	CA    CAInput
	// KeepKeys > 0 keeps only that many current service-account keys.
	KeepKeys           int
	NoSnapshot         bool
	AllowUnlistedNodes bool
	// Abandon drops an unfinished run instead of resuming it.
	Abandon     bool
	ForceUnlock bool
	// HealthTimeout bounds each node's gates after its restart.
	HealthTimeout time.Duration
	PollInterval  time.Duration
	// AgentBatch is how many agents restart together: a count, or when
	// negative a percentage of the cluster's agents.
	AgentBatch int
	// Concurrency bounds clusters in flight.
	Concurrency int
	PKI         pki.Env
	// Material is where new CA material comes from: given the rotation's
	// mode and the primary's current files, it returns the new set (whole,
	// or only the files that change). nil generates it with PKI, as every
	// command does; benchmarks hand out material made once beforehand, so
	// that key generation is not what they measure.
	Material func(mode Mode, current pki.CASet) (pki.CASet, error)
	Sink     Sink
	// Leaf configures `fleetcert rotate`.
	Leaf LeafOptions
	// Export collects the new CA bundle (and tokens) of each cluster.
	Export       bool
	ExportTokens bool
	Now          func() time.Time
}

func (o *Options) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

// NewRunID makes a run id: sortable by time, unique enough across
// controllers, safe in file names.
func NewRunID(now time.Time) string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b)
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

// Export is a cluster's new trust material for the other holders of the
// old one (CI kubeconfigs, provisioning templates).
type Export struct {
	ServerCA   []byte
	Hash       string
	Token      string // server/token; only with ExportTokens
	AgentToken string
}

// RefusedError is a safety check that stopped a cluster before anything on
// it changed (exit 3).
type RefusedError struct {
	Cluster  string
	Problems []string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("cluster %s refused, nothing changed:\n  - %s", e.Cluster, strings.Join(e.Problems, "\n  - "))
}

// RunCluster applies the operation to one cluster.
func RunCluster(ctx context.Context, c inventory.Cluster, nodes []*Node, opts *Options) *ClusterReport {
	if opts.Command == CmdRotate {
		l := newLeafRotation(c, nodes, opts)
		l.finish(l.runPhases(ctx))
		return l.report
	}
	rot := newRotation(c, nodes, opts)
	err := RunPhases(ctx, rot.run, rot.phases())
	rot.finish(err)
	return rot.report
}

// outcomeOf classifies a run's error for the report.
func outcomeOf(err error, dryRun bool) string {
	var refused *RefusedError
	var held *LockHeldError
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
