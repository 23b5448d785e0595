package orchestrator

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/orchestrator/rollout"
)

// Commands that change clusters, as reports, run state and locks name them.
const (
	CmdRotateCA    = "rotate-ca"
	CmdRotateSAKey = "rotate-sa-key"
	CmdRotate      = "rotate"
	CmdCompleteCA  = "rotate-ca --complete"
)

// Operation is one command's work on a cluster: RotateCA, CompleteCA,
// RotateSAKey or RotateLeaf. RunFleet applies it cluster by cluster.
type Operation interface {
	// Command names the operation in reports, run state and locks.
	Command() string
	// RunCluster applies the operation to one cluster, whose nodes are
	// connected (or carry the error that kept them from it).
	RunCluster(ctx context.Context, c inventory.Cluster, nodes []*Node, o *RunOptions) *ClusterReport
}

// RunOptions configure one run over the fleet, whatever its operation.
type RunOptions struct {
	// RunID names this run; a resumed cluster keeps the id of the run it
	// continues.
	RunID  string
	DryRun bool
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
	Sink        Sink
	Now         func() time.Time
}

func (o *RunOptions) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

func (o *RunOptions) emit(e Event) {
	if o.Sink != nil {
		e.Time, e.RunID = o.now(), o.RunID
		o.Sink.Emit(e)
	}
}

// RunFleet applies op wave by wave. Inside a wave at most o.Concurrency
// clusters are in flight. Before each cluster starts, the failure budget,
// the maintenance window and interruption are checked; clusters already in
// flight always run to their end (or a failed gate), because a cluster
// stopped half-way leaves nodes whose tokens break at their next restart.
// A cluster's nodes are dialled when it starts and closed when it ends, so
// connections and facts are held only for the clusters in flight, whatever
// the size of the fleet.
func RunFleet(ctx context.Context, dial Dialer, op Operation, plan rollout.Plan, o *RunOptions) *FleetReport {
	rep := &FleetReport{SchemaVersion: SchemaVersion, RunID: o.RunID, Command: op.Command(), DryRun: o.DryRun, Started: o.now()}
	f := &fleetRun{ctx: ctx, dial: dial, op: op, opts: o, plan: plan, rep: rep, byName: map[string]inventory.Cluster{}}
	for _, w := range plan.Waves {
		f.total += len(w)
		for _, c := range w {
			f.byName[c.Name] = c
		}
	}
	for i, wave := range plan.Waves {
		if i > 0 && plan.WavePause > 0 && f.stopReason() == "" {
			f.soak(i)
		}
		f.runWave(i, wave)
	}
	rep.Finished = o.now()
	rep.sortByWaves(plan.Waves)
	return rep
}

type fleetRun struct {
	ctx    context.Context
	dial   Dialer
	op     Operation
	opts   *RunOptions
	plan   rollout.Plan
	rep    *FleetReport
	total  int
	byName map[string]inventory.Cluster

	mu     sync.Mutex
	failed int
}

// stopReason says why no further cluster may start, or "".
func (f *fleetRun) stopReason() string {
	f.mu.Lock()
	failed := f.failed
	f.mu.Unlock()
	switch {
	case f.ctx.Err() != nil:
		return "interrupted"
	case f.plan.Budget.Exceeded(failed, f.total):
		return fmt.Sprintf("failure budget exceeded (%d failed)", failed)
	case f.plan.Window != nil && !f.plan.Window.Contains(f.opts.now()):
		return "outside the maintenance window " + f.plan.Window.String()
	}
	return ""
}

// runWave runs a wave's clusters, at most --concurrency at once. Whether a
// cluster may start is decided when its turn comes, so a budget exceeded
// or a window closed meanwhile stops the rest of the wave.
func (f *fleetRun) runWave(index int, wave []inventory.Cluster) {
	wr := WaveReport{Index: index + 1, Started: f.opts.now()}
	f.opts.emit(Event{Kind: EventWave, Msg: fmt.Sprintf("wave %d of %d, %d clusters", index+1, len(f.plan.Waves), len(wave))})
	for _, c := range wave {
		wr.Clusters = append(wr.Clusters, c.Name)
	}
	_ = fanOut(f.ctx, max(1, f.opts.Concurrency), wave, func(ctx context.Context, c inventory.Cluster) error {
		if why := f.stopReason(); why != "" {
			f.notStarted(c, why)
			return nil
		}
		nodes := f.connect(c)
		cr := f.op.RunCluster(ctx, c, nodes, f.opts)
		_ = CloseAll(nodes)
		f.record(cr)
		return nil
	})
	wr.Finished = f.opts.now()
	f.rep.Waves = append(f.rep.Waves, wr)
}

func (f *fleetRun) record(cr *ClusterReport) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if cr.Outcome == OutcomeFailed || cr.Outcome == OutcomeRefused {
		f.failed++
	}
	f.rep.Clusters = append(f.rep.Clusters, cr)
}

func (f *fleetRun) notStarted(c inventory.Cluster, why string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rep.Stopped == "" {
		f.rep.Stopped = why
	}
	f.rep.Clusters = append(f.rep.Clusters, &ClusterReport{Cluster: c.Name, Outcome: OutcomeNotRun, RunID: f.opts.RunID, Error: why})
	f.opts.emit(Event{Cluster: c.Name, Kind: EventWarn, Msg: "not started: " + why})
}

// soak waits out --wave-pause, then looks at every cluster finished so
// far: a regression counts as a failure of that cluster.
func (f *fleetRun) soak(nextWave int) {
	f.opts.emit(Event{Kind: EventInfo, Msg: fmt.Sprintf("soaking %s before wave %d", f.plan.WavePause, nextWave+1)})
	select {
	case <-f.ctx.Done():
		return
	case <-time.After(f.plan.WavePause):
	}
	if f.opts.DryRun {
		return
	}
	for _, cr := range f.rep.Clusters {
		if cr.Outcome != OutcomeDone {
			continue
		}
		nodes := f.connect(f.byName[cr.Cluster])
		err := healthPass(f.ctx, nodes)
		_ = CloseAll(nodes)
		if err != nil {
			f.mu.Lock()
			cr.Outcome, cr.Error = OutcomeFailed, "regression after the rollout: "+err.Error()
			f.failed++
			f.mu.Unlock()
			f.opts.emit(Event{Cluster: cr.Cluster, Kind: EventFail, Msg: cr.Error})
		}
	}
}

// connect dials a cluster's nodes and gathers their facts, all at once.
func (f *fleetRun) connect(c inventory.Cluster) []*Node {
	return Connect(f.ctx, c.Nodes, f.dial, max(1, len(c.Nodes)))
}

// healthPass looks at a finished cluster again, as `fleetcert check`
// does, from freshly connected nodes: every node reachable and read, every
// secure token pinning the CA the servers serve, every node Ready.
// Certificates merely nearing expiry are not a regression of the rollout.
func healthPass(ctx context.Context, nodes []*Node) error {
	for _, n := range nodes {
		if n.Err != nil {
			return fmt.Errorf("%s: %v", n.Name, n.Err)
		}
	}
	for _, cc := range Check(ctx, nodes, CheckOptions{}) {
		if len(cc.Unreachable) > 0 {
			return fmt.Errorf("%s: unreachable", cc.Unreachable[0].Name)
		}
		if m := cc.TokenCAMatch(); m != nil && !*m {
			return fmt.Errorf("a join token no longer pins the CA the cluster serves")
		}
	}
	var server *Node
	for _, n := range nodes {
		if n.Role == inventory.Server {
			server = n
			break
		}
	}
	if server == nil {
		return nil
	}
	listed, err := clusterNodes(ctx, server)
	if err != nil {
		return err
	}
	ready := map[string]bool{}
	for _, cn := range listed {
		ready[cn.Name] = cn.Ready
	}
	for _, n := range nodes {
		if !ready[n.NodeName()] {
			return fmt.Errorf("%s is not Ready", n.Name)
		}
	}
	return nil
}
