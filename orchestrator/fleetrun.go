package orchestrator

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/fleetcert/fleetcert/inventory"
)

// Rollout is how a run moves across the fleet.
type Rollout struct {
	// Waves are the clusters in rollout order (see Waves); one wave with
	// every cluster when nil.
	Waves [][]inventory.Cluster
	// Budget: once exceeded, no new cluster starts.
	Budget FailureBudget
	// WavePause is the soak time between waves; a health pass over the
	// finished clusters ends it.
	WavePause time.Duration
	// Window, when set: no cluster starts outside it.
	Window *Window
}

// WaveReport is when a wave ran and what it held.
type WaveReport struct {
	Index    int       `json:"index"`
	Clusters []string  `json:"clusters"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
}

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

// RunFleet applies the operation wave by wave. Inside a wave at most
// opts.Concurrency clusters are in flight. Before each cluster starts, the
// failure budget, the maintenance window and interruption are checked;
// clusters already in flight always run to their end (or a failed gate),
// because a cluster stopped half-way leaves nodes whose tokens break at
// their next restart. A cluster's nodes are dialled when it starts and
// closed when it ends, so connections and facts are held only for the
// clusters in flight, whatever the size of the fleet.
func RunFleet(ctx context.Context, dial Dialer, opts *Options, ro Rollout) *FleetReport {
	rep := &FleetReport{SchemaVersion: SchemaVersion, RunID: opts.RunID, Command: opts.Command, DryRun: opts.DryRun, Started: opts.now()}
	total := 0
	byName := map[string]inventory.Cluster{}
	for _, w := range ro.Waves {
		total += len(w)
		for _, c := range w {
			byName[c.Name] = c
		}
	}
	f := &fleetRun{ctx: ctx, dial: dial, opts: opts, ro: ro, rep: rep, total: total, byName: byName}
	for i, wave := range ro.Waves {
		if i > 0 && ro.WavePause > 0 && f.stopReason() == "" {
			f.soak(i)
		}
		f.runWave(i, wave)
	}
	rep.Finished = opts.now()
	rep.sortByWaves(ro.Waves)
	return rep
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

type fleetRun struct {
	ctx    context.Context
	dial   Dialer
	opts   *Options
	ro     Rollout
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
	case f.ro.Budget.Exceeded(failed, f.total):
		return fmt.Sprintf("failure budget exceeded (%d failed)", failed)
	case f.ro.Window != nil && !f.ro.Window.Contains(f.opts.now()):
		return "outside the maintenance window " + f.ro.Window.String()
	}
	return ""
}

func (f *fleetRun) runWave(index int, wave []inventory.Cluster) {
	wr := WaveReport{Index: index + 1, Started: f.opts.now()}
	if f.opts.Sink != nil {
		f.opts.Sink.Emit(Event{Time: wr.Started, RunID: f.opts.RunID, Kind: EventWave,
			Msg: fmt.Sprintf("wave %d of %d, %d clusters", index+1, len(f.ro.Waves), len(wave))})
	}
	slots := make(chan struct{}, max(1, f.opts.Concurrency))
	var wg sync.WaitGroup
	for _, c := range wave {
		wr.Clusters = append(wr.Clusters, c.Name)
		slots <- struct{}{}
		if why := f.stopReason(); why != "" {
			<-slots
			f.notStarted(c, why)
			continue
		}
		wg.Add(1)
		go func() {
			defer func() { <-slots; wg.Done() }()
			nodes := f.connect(c)
			cr := RunCluster(f.ctx, c, nodes, f.opts)
			_ = CloseAll(nodes)
			f.record(cr)
		}()
	}
	wg.Wait()
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
	if f.opts.Sink != nil {
		f.opts.Sink.Emit(Event{Time: f.opts.now(), RunID: f.opts.RunID, Cluster: c.Name, Kind: EventWarn, Msg: "not started: " + why})
	}
}

// soak waits out --wave-pause, then looks at every cluster finished so
// far: a regression counts as a failure of that cluster.
func (f *fleetRun) soak(nextWave int) {
	if f.opts.Sink != nil {
		f.opts.Sink.Emit(Event{Time: f.opts.now(), RunID: f.opts.RunID, Kind: EventInfo,
			Msg: fmt.Sprintf("soaking %s before wave %d", f.ro.WavePause, nextWave+1)})
	}
	select {
	case <-f.ctx.Done():
		return
	case <-time.After(f.ro.WavePause):
	}
	if f.opts.DryRun {
		return
	}
	for _, cr := range f.rep.Clusters {
		if cr.Outcome != OutcomeDone {
			continue
		}
		nodes := f.connect(f.byName[cr.Cluster])
		err := HealthPass(f.ctx, nodes)
		_ = CloseAll(nodes)
		if err != nil {
			f.mu.Lock()
			cr.Outcome, cr.Error = OutcomeFailed, "regression after the rollout: "+err.Error()
			f.failed++
			f.mu.Unlock()
			if f.opts.Sink != nil {
				f.opts.Sink.Emit(Event{Time: f.opts.now(), RunID: f.opts.RunID, Cluster: cr.Cluster, Kind: EventFail, Msg: cr.Error})
			}
		}
	}
}

// connect dials a cluster's nodes and gathers their facts, all at once.
func (f *fleetRun) connect(c inventory.Cluster) []*Node {
	return Connect(f.ctx, c.Nodes, f.dial, max(1, len(c.Nodes)))
}

// HealthPass looks at a finished cluster again, as `fleetcert check`
// does, from freshly connected nodes: every node reachable and read, every
// secure token pinning the CA the servers serve, every node Ready.
// Certificates merely nearing expiry are not a regression of the rollout.
func HealthPass(ctx context.Context, nodes []*Node) error {
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
	listed, err := ClusterNodes(ctx, server)
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
