package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/k3s"
	"github.com/fleetcert/fleetcert/pki"
	"github.com/fleetcert/fleetcert/remote"
)

// rotation is one cluster's rotate-ca or rotate-sa-key: what the phases
// find and decide, shared between them.
type rotation struct {
	opts   *Options
	run    *ClusterRun
	report *ClusterReport

	prior    *RunState // an unfinished run found on the primary
	lockFile []byte    // the lock file as preflight read it
	lock     *ClusterLock
	lost     error // set once the lock was taken over by another run
	state    *RunState

	mode    Mode
	current pki.CASet // the primary's CA files, keys in memory only
	staged  pki.CASet // what is loaded: only the files that change
	served  string    // the hash the cluster served before the run
	target  string    // the hash every secure token must pin afterwards
	nodeRep map[string]*NodeReport
}

func newRotation(c inventory.Cluster, nodes []*Node, opts *Options) *rotation {
	ordered := orderNodes(nodes)
	r := &rotation{
		opts: opts,
		run: &ClusterRun{Cluster: c, Nodes: ordered, RunID: opts.RunID, DryRun: opts.DryRun,
			Sink: opts.Sink, Now: opts.Now},
		report:  &ClusterReport{Cluster: c.Name, RunID: opts.RunID, Started: opts.now()},
		nodeRep: map[string]*NodeReport{},
	}
	for _, n := range ordered {
		nr := &NodeReport{Node: n.Name, Role: string(n.Role), Outcome: "untouched"}
		r.nodeRep[n.Name] = nr
	}
	return r
}

// orderNodes puts servers first, the primary first among them.
func orderNodes(nodes []*Node) []*Node {
	var out []*Node
	for _, n := range nodes {
		if n.Primary {
			out = append(out, n)
		}
	}
	for _, n := range nodes {
		if !n.Primary && n.Role == inventory.Server {
			out = append(out, n)
		}
	}
	for _, n := range nodes {
		if n.Role == inventory.Agent {
			out = append(out, n)
		}
	}
	return out
}

// phases is the ordered list of the operation's phases. Everything before
// the lock only reads: a cluster refused there has nothing of fleetcert's
// on it.
func (r *rotation) phases() []Phase {
	return []Phase{
		preflightPhase{r}, materialPhase{r}, lockPhase{r}, backupPhase{r}, snapshotPhase{r},
		loadPhase{r}, serversPhase{r}, agentsPhase{r}, verifyPhase{r}, cleanupPhase{r},
	}
}

// finish fills in the report once the phases have run.
func (r *rotation) finish(err error) {
	rep := r.report
	rep.RunID = r.run.RunID
	rep.Outcome = outcomeOf(err, r.opts.DryRun)
	if r.prior != nil && r.opts.Abandon && err == nil {
		rep.Outcome = OutcomeAbandoned
	}
	if err != nil {
		rep.Error = err.Error()
	}
	rep.Mode, rep.OldHash, rep.TargetHash = r.mode, r.served, r.target
	rep.Staged = r.staged.Names()
	rep.Changes, rep.Phases = r.run.Changes(), r.run.Phases()
	rep.Finished = r.opts.now()
	for _, n := range r.run.Nodes {
		rep.Nodes = append(rep.Nodes, *r.nodeRep[n.Name])
	}
	r.run.emit(nil, EventCluster, rep.Outcome)
}

// saveState records progress on the primary (not in dry-run).
func (r *rotation) saveState(ctx context.Context) error {
	if r.opts.DryRun || r.state == nil {
		return nil
	}
	p := r.run.Primary()
	return saveState(ctx, p.Conn, p.Layout, r.state, r.opts.now())
}

func (r *rotation) setStep(ctx context.Context, n *Node, step NodeStep) error {
	if r.state == nil {
		return nil
	}
	r.state.Nodes[n.Name] = step
	return r.saveState(ctx)
}

// lockLost returns an error once another run has taken the cluster lock
// over (its renewal found the file changed): from then on this run must not
// touch another node.
func (r *rotation) lockLost() error {
	if r.lock != nil && r.lost == nil {
		select {
		case err := <-r.lock.Lost():
			r.lost = err
		default:
		}
	}
	return r.lost
}

// isSAKey tells rotate-sa-key from rotate-ca.
func (r *rotation) isSAKey() bool { return r.opts.Command == CmdRotateSAKey }

// hashChanges reports whether tokens must be rewritten.
func (r *rotation) hashChanges() bool { return r.target != r.served }

// allowedHashes are the hashes a token may pin while this run is under way.
func (r *rotation) allowedHashes() []string {
	if r.target == "" || r.target == r.served {
		return []string{r.served}
	}
	return []string{r.served, r.target}
}

// ---- phases -------------------------------------------------------------

type preflightPhase struct{ r *rotation }

func (preflightPhase) Title() string { return "preflight" }
func (p preflightPhase) Run(ctx context.Context, _ *ClusterRun) error {
	return p.r.preflight(ctx)
}

type lockPhase struct{ r *rotation }

func (lockPhase) Title() string                                  { return "lock" }
func (p lockPhase) Run(ctx context.Context, _ *ClusterRun) error { return p.r.takeLock(ctx) }

// CleanUp on a failed run records where it stopped, so a rerun resumes,
// and releases the lock.
func (p lockPhase) CleanUp(ctx context.Context, _ *ClusterRun) {
	r := p.r
	if r.state != nil && !r.opts.DryRun {
		r.state.Error = "run stopped before finishing; rerun the same command to resume"
		if err := r.saveState(ctx); err != nil {
			r.run.Warn(r.run.Primary(), "could not save run state: %v", err)
		}
	}
	if r.lock != nil {
		if err := r.lock.Release(ctx); err != nil {
			r.run.Warn(r.run.Primary(), "could not release the cluster lock: %v", err)
		}
		r.lock = nil
	}
}

type materialPhase struct{ r *rotation }

func (materialPhase) Title() string                { return "material" }
func (p materialPhase) ShouldRun(*ClusterRun) bool { return !p.r.abandoning() }
func (p materialPhase) Run(ctx context.Context, _ *ClusterRun) error {
	return p.r.material(ctx)
}

type backupPhase struct{ r *rotation }

func (backupPhase) Title() string                { return "backup" }
func (p backupPhase) ShouldRun(*ClusterRun) bool { return !p.r.abandoning() }
func (p backupPhase) Run(ctx context.Context, run *ClusterRun) error {
	r := p.r
	for _, n := range run.Nodes {
		if r.isSAKey() && n.Role == inventory.Agent {
			continue
		}
		paths := tokenPaths(n)
		if n.Role == inventory.Server {
			paths = append(paths, n.Layout.ServerTLSDir(), n.Layout.ServerToken())
		}
		if len(paths) == 0 {
			continue
		}
		err := run.Wet(n, fmt.Sprintf("back up %d paths to %s", len(paths), n.Layout.BackupDir(run.RunID)), func() error {
			return Backup(ctx, n, run.RunID, paths)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

type snapshotPhase struct{ r *rotation }

func (snapshotPhase) Title() string { return "etcd-snapshot" }

// ShouldRun: only embedded etcd has snapshots, and a loaded run took its
// snapshot already.
func (p snapshotPhase) ShouldRun(run *ClusterRun) bool {
	r := p.r
	return !r.abandoning() && !r.opts.NoSnapshot && run.Primary().Facts.EmbeddedEtcd &&
		!(r.state != nil && (r.state.Loaded || r.state.Snapshot != ""))
}

func (p snapshotPhase) Run(ctx context.Context, run *ClusterRun) error {
	r := p.r
	primary := run.Primary()
	name := "fleetcert-" + run.RunID
	err := run.Wet(primary, "take etcd snapshot "+name, func() error {
		res, err := primary.Conn.Run(ctx, primary.Layout.EtcdSnapshotCmd(name), nil)
		if err != nil {
			return err
		}
		return res.Err()
	})
	if err != nil {
		return err
	}
	r.report.Snapshot = name
	r.report.Warnings = append(r.report.Warnings, fmt.Sprintf(
		"etcd snapshot %s was taken before the new CA material was loaded; restoring it needs the server token of that time", name))
	if r.state != nil {
		r.state.Snapshot = name
		return r.saveState(ctx)
	}
	return nil
}

type loadPhase struct{ r *rotation }

func (loadPhase) Title() string { return "stage+load" }
func (p loadPhase) ShouldRun(*ClusterRun) bool {
	return !p.r.abandoning() && !(p.r.state != nil && p.r.state.Loaded)
}

func (p loadPhase) Run(ctx context.Context, run *ClusterRun) error {
	r := p.r
	primary := run.Primary()
	dir := primary.Layout.StageDir(run.RunID)
	if r.state != nil {
		r.state.StageDir = dir
		if err := r.saveState(ctx); err != nil {
			return err
		}
	}
	err := run.Wet(primary, fmt.Sprintf("stage %d files in %s/tls", len(r.staged), dir), func() error {
		return Stage(ctx, primary, dir, r.staged)
	})
	if err != nil {
		return err
	}
	force := r.mode == ModeNewRoot
	what := "load new CA material: k3s certificate rotate-ca --path=" + dir
	if force {
		what += " --force"
	}
	if err := run.Wet(primary, what, func() error { return LoadCA(ctx, primary, dir, force) }); err != nil {
		return err
	}
	if r.state != nil {
		r.state.Loaded = true
		return r.saveState(ctx)
	}
	return nil
}

type serversPhase struct{ r *rotation }

func (serversPhase) Title() string                { return "servers" }
func (p serversPhase) ShouldRun(*ClusterRun) bool { return !p.r.abandoning() }

// Run restarts servers one at a time, each behind its gates: restarting
// servers within seconds of each other has broken etcd (rke2 #7629).
func (p serversPhase) Run(ctx context.Context, run *ClusterRun) error {
	for _, n := range run.Servers() {
		if err := errors.Join(ctx.Err(), p.r.lockLost()); err != nil {
			return err
		}
		if err := p.r.rollNode(ctx, n); err != nil {
			return err
		}
	}
	return nil
}

type agentsPhase struct{ r *rotation }

func (agentsPhase) Title() string { return "agents" }
func (p agentsPhase) ShouldRun(run *ClusterRun) bool {
	return !p.r.abandoning() && !p.r.isSAKey() && len(run.Agents()) > 0
}

// Run restarts agents in batches after every server serves the new CA;
// agents download the CA bundle and get new leaf certs at every start.
func (p agentsPhase) Run(ctx context.Context, run *ClusterRun) error {
	agents := run.Agents()
	batch := batchSize(p.r.opts.AgentBatch, len(agents))
	for i := 0; i < len(agents); i += batch {
		if err := errors.Join(ctx.Err(), p.r.lockLost()); err != nil {
			return err
		}
		if err := p.r.rollBatch(ctx, agents[i:min(i+batch, len(agents))]); err != nil {
			return err
		}
	}
	return nil
}

type verifyPhase struct{ r *rotation }

func (verifyPhase) Title() string                                  { return "verify" }
func (p verifyPhase) ShouldRun(*ClusterRun) bool                   { return !p.r.abandoning() && !p.r.opts.DryRun }
func (p verifyPhase) Run(ctx context.Context, _ *ClusterRun) error { return p.r.verify(ctx) }

type cleanupPhase struct{ r *rotation }

func (cleanupPhase) Title() string { return "cleanup" }
func (p cleanupPhase) Run(ctx context.Context, run *ClusterRun) error {
	r := p.r
	primary := run.Primary()
	if r.abandoning() {
		if err := r.abandonPrior(ctx); err != nil {
			return err
		}
	} else {
		dir := primary.Layout.StageDir(run.RunID)
		if err := run.Wet(primary, "remove staging directory "+dir, func() error { return RemoveDir(ctx, primary, dir) }); err != nil {
			return err
		}
		if r.state != nil && !r.opts.DryRun {
			r.state.Outcome, r.state.Error = OutcomeDone, ""
			if err := finishState(ctx, primary.Conn, primary.Layout, r.state, r.opts.now()); err != nil {
				return err
			}
		}
	}
	if r.lock != nil {
		err := r.lock.Release(ctx)
		r.lock = nil
		if err != nil {
			return fmt.Errorf("release cluster lock: %w", err)
		}
	}
	return nil
}

// abandonPrior closes the unfinished run as abandoned (--abandon) and
// removes its staging directory, which holds new cluster CA keys.
func (r *rotation) abandonPrior(ctx context.Context) error {
	primary := r.run.Primary()
	if dir := r.prior.StageDir; dir != "" {
		if err := r.run.Wet(primary, "remove staging directory "+dir, func() error { return RemoveDir(ctx, primary, dir) }); err != nil {
			return err
		}
	}
	if r.opts.DryRun {
		return nil
	}
	r.prior.Outcome, r.prior.Error = OutcomeAbandoned, ""
	return finishState(ctx, primary.Conn, primary.Layout, r.prior, r.opts.now())
}

// abandoning is a run asked to drop an unfinished one (--abandon).
func (r *rotation) abandoning() bool { return r.opts.Abandon && r.prior != nil }

// ---- node roll ------------------------------------------------------------

// rollNode rewrites a server's tokens, restarts it and waits for its gates.
func (r *rotation) rollNode(ctx context.Context, n *Node) error {
	start := time.Now()
	rep := r.nodeRep[n.Name]
	defer func() { rep.Duration = time.Since(start) }()
	if r.state != nil && r.state.Nodes[n.Name] == StepDone {
		rep.Outcome = "already-done"
		r.run.Info(n, "already done in this run")
		return nil
	}
	files, err := r.rewriteTokens(ctx, n)
	if err != nil {
		return r.nodeFailed(n, err)
	}
	rep.Files = files
	t0, err := r.restart(ctx, n)
	if err != nil {
		return r.nodeFailed(n, err)
	}
	if r.opts.DryRun {
		rep.Outcome = "would-restart"
		return nil
	}
	if err := r.serverGates(ctx, n, t0); err != nil {
		return r.nodeFailed(n, err)
	}
	rep.Outcome = "restarted"
	return r.setStep(ctx, n, StepDone)
}

// rollBatch does the same for a batch of agents, restarted together and
// then gated together; every agent of the batch is waited for before the
// batch's first failure stops the cluster.
func (r *rotation) rollBatch(ctx context.Context, agents []*Node) error {
	type started struct {
		n         *Node
		t0, begin time.Time
	}
	var waiting []started
	for _, n := range agents {
		begin := time.Now()
		if r.state != nil && r.state.Nodes[n.Name] == StepDone {
			r.nodeRep[n.Name].Outcome = "already-done"
			continue
		}
		files, err := r.rewriteTokens(ctx, n)
		if err != nil {
			return r.nodeFailed(n, err)
		}
		r.nodeRep[n.Name].Files = files
		t0, err := r.restart(ctx, n)
		if err != nil {
			return r.nodeFailed(n, err)
		}
		if r.opts.DryRun {
			r.nodeRep[n.Name].Outcome, r.nodeRep[n.Name].Duration = "would-restart", time.Since(begin)
			continue
		}
		waiting = append(waiting, started{n, t0, begin})
	}
	errs := make([]error, len(waiting))
	done := make(chan int)
	for i, w := range waiting {
		go func() {
			errs[i] = r.agentGates(ctx, w.n, w.t0)
			done <- i
		}()
	}
	for range waiting {
		<-done
	}
	var failed []error
	for i, w := range waiting {
		r.nodeRep[w.n.Name].Duration = time.Since(w.begin) // the batch's gates end together
		if errs[i] != nil {
			failed = append(failed, r.nodeFailed(w.n, errs[i]))
			continue
		}
		r.nodeRep[w.n.Name].Outcome = "restarted"
		if err := r.setStep(ctx, w.n, StepDone); err != nil {
			return err
		}
	}
	return errors.Join(failed...)
}

func (r *rotation) nodeFailed(n *Node, err error) error {
	rep := r.nodeRep[n.Name]
	rep.Outcome, rep.Error = "failed", err.Error()
	return err
}

// rewriteTokens makes every secure token of n pin the target hash, then
// reloads systemd if a unit changed. Returns the files changed.
func (r *rotation) rewriteTokens(ctx context.Context, n *Node) ([]string, error) {
	if !r.hashChanges() {
		return nil, nil
	}
	files, err := r.rewriteTokensOnce(ctx, n)
	if !errors.Is(err, remote.ErrChanged) {
		return files, err
	}
	// A file changed since facts read it (configuration management, an
	// operator): never overwrite it blind. Read the node again and plan
	// anew, once; tokens already rewritten are skipped as pinning the target.
	r.run.Warn(n, "%v; reading the node again", err)
	if err := n.Refresh(ctx); err != nil {
		return files, err
	}
	more, err := r.rewriteTokensOnce(ctx, n)
	return append(files, more...), err
}

func (r *rotation) rewriteTokensOnce(ctx context.Context, n *Node) ([]string, error) {
	plan, err := PlanTokens(n, r.target, r.allowedHashes())
	if err != nil {
		return nil, err
	}
	// A token pinning some other CA refuses the node before any of its
	// files is written, so a node is never left half rewritten.
	for _, fr := range plan {
		for _, s := range fr.Skipped {
			if s.Reason == k3s.SkipForeign {
				return nil, fmt.Errorf("%s:%d pins a CA hash that is neither the old nor the new one; refusing to guess", s.Source.File, s.Source.Line)
			}
		}
	}
	var files []string
	reload := false
	for _, fr := range plan {
		if !fr.Changed() {
			continue
		}
		mode := fileMode(n, fr.Path)
		err := r.run.Wet(n, fmt.Sprintf("rewrite %d token(s) in %s to pin %s", len(fr.Rewritten), fr.Path, short(r.target)), func() error {
			return n.Conn.WriteFile(ctx, fr.Path, fr.New, fsMode(mode), remote.IfContent(fr.Old))
		})
		if err != nil {
			return files, err
		}
		files = append(files, fr.Path)
		reload = reload || fr.Kind.ReloadsUnit()
	}
	if reload {
		err := r.run.Wet(n, "systemctl daemon-reload", func() error {
			res, err := n.Conn.Run(ctx, k3s.DaemonReloadCmd, nil)
			if err != nil {
				return err
			}
			return res.Err()
		})
		if err != nil {
			return files, err
		}
	}
	if r.state != nil && len(files) > 0 {
		r.state.Nodes[n.Name] = StepRewritten
		return files, r.saveState(ctx)
	}
	return files, nil
}

func (r *rotation) restart(ctx context.Context, n *Node) (time.Time, error) {
	var t0 time.Time
	err := r.run.Wet(n, "restart "+n.Layout.UnitName()+".service", func() error {
		var err error
		t0, err = Restart(ctx, n)
		return err
	})
	if err == nil && r.state != nil && !r.opts.DryRun {
		r.state.Nodes[n.Name] = StepRestarted
		err = r.saveState(ctx)
	}
	return t0, err
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12] + "…"
	}
	return h
}

// batchSize resolves --agent-batch: n > 0 is a count, n < 0 a percentage
// of total, rounded down, at least 1.
func batchSize(n, total int) int {
	if n < 0 {
		return max(1, total*-n/100)
	}
	return max(1, n)
}
