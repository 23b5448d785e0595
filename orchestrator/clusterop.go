package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"regexp"
	"strings"
	"time"

	"github.com/fleetcert/fleetcert/inventory"
)

// clusterOp is what every operation on one cluster shares: its run (nodes,
// changes, events), its report, and its record on the primary: the cluster
// lock and the run state that makes a rerun resume. The operations
// (rotateca.go, rotateleaf.go) build their phases on it.
type clusterOp struct {
	command string
	opts    *RunOptions
	run     *clusterRun
	report  *ClusterReport
	nodeRep map[string]*NodeReport

	prior    *RunState // an unfinished run found on the primary
	lockFile []byte    // the lock file as preflight read it
	lock     *clusterLock
	lost     error // set once the lock was taken over by another run
	state    *RunState
	// initState fills a new (or not yet loaded) run state's own fields,
	// when the lock is taken.
	initState func(*RunState)
	// reloadFirst are nodes whose unit the unfinished run rewrote without
	// reloading systemd: the resumed run reloads before it touches them.
	reloadFirst map[string]bool
}

func newClusterOp(command string, c inventory.Cluster, nodes []*Node, o *RunOptions) *clusterOp {
	ordered := orderNodes(nodes)
	op := &clusterOp{
		command: command,
		opts:    o,
		run: &clusterRun{Cluster: c, Nodes: ordered, RunID: o.RunID, DryRun: o.DryRun,
			Sink: o.Sink, Now: o.Now},
		report:  &ClusterReport{Cluster: c.Name, RunID: o.RunID, Started: o.now()},
		nodeRep: map[string]*NodeReport{},
	}
	for _, n := range ordered {
		op.nodeRep[n.Name] = &NodeReport{Node: n.Name, Role: string(n.Role), Outcome: "untouched"}
	}
	return op
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

// drive runs the phases and fills in the report.
func (op *clusterOp) drive(ctx context.Context, phases []phase) *ClusterReport {
	op.finish(runPhases(ctx, op.run, phases))
	return op.report
}

// finish fills in the report once the phases have run.
func (op *clusterOp) finish(err error) {
	rep := op.report
	rep.RunID = op.run.RunID
	rep.Outcome = outcomeOf(err, op.opts.DryRun)
	if op.prior != nil && op.opts.Abandon && err == nil {
		rep.Outcome = OutcomeAbandoned
	}
	if err != nil {
		rep.Error = err.Error()
	}
	rep.Changes, rep.Phases = op.run.Changes(), op.run.Phases()
	rep.Finished = op.opts.now()
	for _, n := range op.run.Nodes {
		rep.Nodes = append(rep.Nodes, *op.nodeRep[n.Name])
	}
	op.run.emit(nil, EventCluster, rep.Outcome)
}

// refuse is a refusedError for this cluster.
func (op *clusterOp) refuse(problems ...string) error {
	return &refusedError{Cluster: op.run.Cluster.Name, Problems: problems}
}

func (op *clusterOp) warn(n *Node, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if n != nil {
		msg = n.Name + ": " + msg
	}
	op.report.Warnings = append(op.report.Warnings, msg)
	op.run.Warn(n, format, args...)
}

// ---- run state and lock ------------------------------------------------

// readRunState picks up the lock and an unfinished run from the primary's
// snapshot. A run of the same command resumes with its id and target; one
// of another command blocks until finished or abandoned.
func (op *clusterOp) readRunState(primary *Node, bad func(string, ...any)) {
	current, _, err := readState(primary.Layout, primary.Snapshot)
	if err != nil {
		bad("%s: %v", primary.Name, err)
		return
	}
	if f, ok := primary.Snapshot.Files[path.Join(primary.Layout.FleetcertDir(), "lock")]; ok {
		op.lockFile = f.Data
	}
	switch {
	case current == nil:
		return
	case current.Command != op.command && !op.opts.Abandon:
		bad("an unfinished %s run %s (started %s) holds this cluster; finish it by rerunning %s, or drop it with --abandon",
			current.Command, current.RunID, current.Started.Format("2006-01-02 15:04"), current.Command)
		return
	case op.opts.Abandon && current.Loaded:
		bad("run %s (%s) already loaded new CA material into the cluster's datastore: the next start of any server switches to it, "+
			"and tokens not yet rewritten would stop working; finish it by rerunning %s instead of abandoning it",
			current.RunID, current.Command, current.Command)
		return
	}
	op.prior = current
	if !op.opts.Abandon {
		op.run.RunID = current.RunID
		op.report.Resumed = true
		op.run.Info(nil, "resuming unfinished run %s (target %s)", current.RunID, short(current.TargetHash))
	}
}

// abandoning is a run asked to drop an unfinished one (--abandon).
func (op *clusterOp) abandoning() bool { return op.opts.Abandon && op.prior != nil }

// resumes reports whether n is a node the unfinished run this one resumes
// had already restarted (or stopped) when it ended.
func (op *clusterOp) resumes(n *Node) bool {
	if op.prior == nil || op.opts.Abandon || op.prior.Command != op.command {
		return false
	}
	step := op.prior.Nodes[n.Name]
	return step == StepRestarted || step == StepRewritten
}

// takeLock takes the cluster lock and opens (or resumes) the run state.
func (op *clusterOp) takeLock(ctx context.Context) error {
	run, primary := op.run, op.run.Primary()
	dir := primary.Layout.FleetcertDir()
	if op.opts.ForceUnlock && op.lockFile != nil {
		err := run.Wet(primary, "remove the cluster lock (--force-unlock)", func() error {
			return forceUnlock(ctx, primary.Conn, dir)
		})
		if err != nil {
			return err
		}
		op.lockFile = nil
	}
	what := "take the cluster lock " + path.Join(dir, "lock")
	if op.opts.DryRun {
		if err := lockBlocks(run.Cluster.Name, op.lockFile, op.opts.now()); err != nil {
			return err
		}
		return run.Wet(primary, what, func() error { return nil })
	}
	info := LockInfo{Owner: controllerName(), PID: os.Getpid(), RunID: run.RunID, Command: op.command}
	var lock *clusterLock
	err := run.Wet(primary, what, func() error {
		var err error
		lock, err = acquireLock(ctx, primary.Conn, run.Cluster.Name, dir, op.lockFile, info, op.opts.now())
		return err
	})
	if err != nil {
		var held *lockHeldError
		if errors.As(err, &held) {
			return held
		}
		return err
	}
	op.lock = lock
	return op.openState(ctx)
}

// openState continues the unfinished run, or starts a new record.
func (op *clusterOp) openState(ctx context.Context) error {
	if op.prior != nil {
		op.state = op.prior
		if op.opts.Abandon {
			op.run.Info(op.run.Primary(), "abandoning unfinished run %s", op.prior.RunID)
			return nil
		}
	} else {
		op.state = &RunState{RunID: op.run.RunID, Command: op.command, Started: op.opts.now()}
	}
	if op.state.Nodes == nil {
		op.state.Nodes = map[string]NodeStep{}
	}
	if !op.state.Loaded && op.initState != nil {
		op.initState(op.state)
	}
	return op.saveState(ctx)
}

// saveState records progress on the primary (not in dry-run).
func (op *clusterOp) saveState(ctx context.Context) error {
	if op.opts.DryRun || op.state == nil {
		return nil
	}
	p := op.run.Primary()
	return saveState(ctx, p.Conn, p.Layout, op.state, op.opts.now())
}

func (op *clusterOp) setStep(ctx context.Context, n *Node, step NodeStep) error {
	if op.state == nil {
		return nil
	}
	op.state.Nodes[n.Name] = step
	return op.saveState(ctx)
}

// stepDone reports whether the run this one resumes finished n already.
func (op *clusterOp) stepDone(n *Node) bool {
	return op.state != nil && op.state.Nodes[n.Name] == StepDone
}

// lockLost returns an error once another run has taken the cluster lock
// over (its renewal found the file changed): from then on this run must not
// touch another node.
func (op *clusterOp) lockLost() error {
	if op.lock != nil && op.lost == nil {
		select {
		case err := <-op.lock.Lost():
			op.lost = err
		default:
		}
	}
	return op.lost
}

// mayContinue is checked before each node or batch: not interrupted, and
// the lock still ours.
func (op *clusterOp) mayContinue(ctx context.Context) error {
	return errors.Join(ctx.Err(), op.lockLost())
}

// releaseLock stops renewing the lock and removes it.
func (op *clusterOp) releaseLock(ctx context.Context) error {
	if op.lock == nil {
		return nil
	}
	err := op.lock.Release(ctx)
	op.lock = nil
	if err != nil {
		return fmt.Errorf("release cluster lock: %w", err)
	}
	return nil
}

// abandonPrior closes the unfinished run as abandoned (--abandon) and
// removes its staging directory, which holds new cluster CA keys.
func (op *clusterOp) abandonPrior(ctx context.Context) error {
	primary := op.run.Primary()
	if dir := op.prior.StageDir; dir != "" {
		if err := op.run.Wet(primary, "remove staging directory "+dir, func() error { return removeDir(ctx, primary, dir) }); err != nil {
			return err
		}
	}
	if op.opts.DryRun {
		return nil
	}
	op.prior.Outcome, op.prior.Error = OutcomeAbandoned, ""
	return finishState(ctx, primary.Conn, primary.Layout, op.prior, op.opts.now())
}

// ---- phases every operation has ----------------------------------------

// lockPhase takes the cluster lock and opens the run state.
type lockPhase struct{ op *clusterOp }

func (lockPhase) Title() string                                  { return "lock" }
func (p lockPhase) Run(ctx context.Context, _ *clusterRun) error { return p.op.takeLock(ctx) }

// CleanUp on a failed run records where it stopped, so a rerun resumes,
// and releases the lock.
func (p lockPhase) CleanUp(ctx context.Context, _ *clusterRun) {
	op := p.op
	if op.state != nil && !op.opts.DryRun {
		op.state.Error = "run stopped before finishing; rerun the same command to resume"
		if err := op.saveState(ctx); err != nil {
			op.run.Warn(op.run.Primary(), "could not save run state: %v", err)
		}
	}
	if err := op.releaseLock(ctx); err != nil {
		op.run.Warn(op.run.Primary(), "%v", err)
	}
}

// cleanupPhase ends a run: unstage (when the operation staged anything)
// removes what it left on the primary, then the run state becomes the
// cluster's last run and the lock is released. An abandoning run closes
// the unfinished one instead.
type cleanupPhase struct {
	op      *clusterOp
	unstage func(ctx context.Context) error
}

func (cleanupPhase) Title() string { return "cleanup" }
func (p cleanupPhase) Run(ctx context.Context, run *clusterRun) error {
	op := p.op
	primary := run.Primary()
	switch {
	case op.abandoning():
		if err := op.abandonPrior(ctx); err != nil {
			return err
		}
	default:
		if p.unstage != nil {
			if err := p.unstage(ctx); err != nil {
				return err
			}
		}
		if op.state != nil && !op.opts.DryRun {
			op.state.Outcome, op.state.Error = OutcomeDone, ""
			if err := finishState(ctx, primary.Conn, primary.Layout, op.state, op.opts.now()); err != nil {
				return err
			}
		}
	}
	return op.releaseLock(ctx)
}

// ---- restarting nodes ---------------------------------------------------

// restartStep is how an operation restarts one node: begin makes the
// node's change and starts k3s again without waiting, returning the node's
// clock at the restart (skip: nothing to do on this node); gates waits for
// it; after, when set, runs once the gates passed.
type restartStep struct {
	begin func(ctx context.Context, n *Node) (t0 time.Time, skip bool, err error)
	gates func(ctx context.Context, n *Node, t0 time.Time) error
	after func(ctx context.Context, n *Node) error
}

// restartBatch restarts nodes together, then waits for each behind its
// gates; every node of the batch is waited for before the batch's
// failures (joined) stop the cluster. Nodes a resumed run finished are
// skipped.
func (op *clusterOp) restartBatch(ctx context.Context, nodes []*Node, step restartStep) error {
	type started struct {
		n         *Node
		t0, begin time.Time
	}
	var waiting []started
	for _, n := range nodes {
		begin := time.Now()
		rep := op.nodeRep[n.Name]
		if op.stepDone(n) {
			rep.Outcome = "already-done"
			op.run.Info(n, "already done in this run")
			continue
		}
		t0, skip, err := step.begin(ctx, n)
		if err != nil {
			return op.nodeFailed(n, err)
		}
		if skip {
			continue
		}
		if op.opts.DryRun {
			rep.Outcome, rep.Duration = "would-restart", time.Since(begin)
			continue
		}
		waiting = append(waiting, started{n, t0, begin})
	}
	gated := fanOut(ctx, 0, waiting, func(ctx context.Context, w started) error {
		err := step.gates(ctx, w.n, w.t0)
		if err == nil && step.after != nil {
			err = step.after(ctx, w.n)
		}
		rep := op.nodeRep[w.n.Name]
		rep.Duration = time.Since(w.begin)
		if err != nil {
			return op.nodeFailed(w.n, err)
		}
		rep.Outcome = "restarted"
		return nil
	})
	// Steps are saved one at a time: the run state is one file.
	for _, w := range waiting {
		if op.nodeRep[w.n.Name].Outcome != "restarted" {
			continue
		}
		if err := op.setStep(ctx, w.n, StepDone); err != nil {
			return errors.Join(gated, err)
		}
	}
	return gated
}

// inBatches restarts nodes batch nodes at a time, checking before each
// batch that the run may go on.
func (op *clusterOp) inBatches(ctx context.Context, nodes []*Node, batch int, step restartStep) error {
	for i := 0; i < len(nodes); i += batch {
		if err := op.mayContinue(ctx); err != nil {
			return err
		}
		if err := op.restartBatch(ctx, nodes[i:min(i+batch, len(nodes))], step); err != nil {
			return err
		}
	}
	return nil
}

// renewDeadline bounds one node's stop, certificate rotate and start.
const renewDeadline = 10 * time.Minute

// backupLine is how k3s reports the copy `certificate rotate` made.
var backupLine = regexp.MustCompile(`backed up certificates to (\S+)`)

// renewNode stops k3s (certificate rotate needs it down), renews the
// node's leaf certificates (services: k3s's own set when empty), and starts
// it without waiting. Returns the node's clock before the start and the
// backup k3s made.
func (op *clusterOp) renewNode(ctx context.Context, n *Node, services []string) (time.Time, string, error) {
	lay := n.Layout
	what := "stop " + lay.UnitName() + ", k3s certificate rotate"
	if len(services) > 0 {
		what += " --service " + strings.Join(services, ",")
	}
	what += ", start"
	var t0 time.Time
	var backup string
	err := op.run.Wet(n, what, func() error {
		if err := op.setStep(ctx, n, StepRestarted); err != nil {
			return err
		}
		script := lay.StopCmd() + " && " + lay.CertificateRotateCmd(services) + " 2>&1; rc=$?; date +%s; " +
			lay.StartCmd() + "; exit $rc"
		// Stop, rotate and start must not be cut in half: an interrupt
		// between stop and start would leave k3s down. The sequence gets
		// its own deadline instead of the run's context.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), renewDeadline)
		defer cancel()
		res, err := n.Conn.Run(sctx, script, nil)
		if err != nil {
			return err
		}
		out := string(res.Stdout)
		if res.ExitCode != 0 {
			return fmt.Errorf("k3s certificate rotate failed (k3s restarted with its old certificates): %s", lastLines(out, 3))
		}
		if m := backupLine.FindStringSubmatch(out); m != nil {
			backup = strings.TrimSuffix(m[1], ",")
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		sec, perr := parseUnix(lines[len(lines)-1])
		t0 = sec
		return perr
	})
	return t0, backup, err
}

func (op *clusterOp) nodeFailed(n *Node, err error) error {
	rep := op.nodeRep[n.Name]
	rep.Outcome, rep.Error = "failed", err.Error()
	return err
}

// passGates runs gates in order under one deadline (--health-timeout) for
// the node: a failed gate names itself and what it last saw.
func (op *clusterOp) passGates(ctx context.Context, n *Node, gates []gate) error {
	if n.Layout.OpenRC() {
		// OpenRC has no readiness protocol; the first proof that the
		// restart happened is a new k3s process under supervise-daemon.
		before := n.Facts.MainPID
		gates = append([]gate{{"k3s runs under a new PID (child_pid)", func(ctx context.Context) (bool, string, error) {
			pid, err := childPID(ctx, n)
			return pid != 0 && pid != before, fmt.Sprintf("child_pid %d, %d before the restart", pid, before), err
		}}}, gates...)
	}
	if n.Layout.StaticPods() && n.Role == inventory.Server {
		// A restart leaves the static pods running, so the apiserver
		// answers readyz at once, maybe still the old pod. The service
		// reports ready only once it has replaced the pods whose files
		// changed: its own word that they run what is on disk.
		gates = append(gates, gate{n.Layout.ServiceLabel() + " reports ready (static pods reconciled)", func(ctx context.Context) (bool, string, error) {
			return serviceReady(ctx, n)
		}})
	}
	deadline := time.Now().Add(op.opts.HealthTimeout)
	poll := op.opts.PollInterval
	if poll == 0 {
		poll = defaultPoll
	}
	for _, g := range gates {
		left := time.Until(deadline)
		if err := pollGate(ctx, n.Name, g.name, max(left, time.Millisecond), poll, g.probe); err != nil {
			return err
		}
		op.run.emit(n, EventGate, g.name)
	}
	return nil
}

// agentBatch resolves --agent-batch for total agents: n > 0 is a count,
// n < 0 a percentage of total, rounded down, at least 1.
func agentBatch(n, total int) int {
	if n < 0 {
		return max(1, total*-n/100)
	}
	return max(1, n)
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12] + "…"
	}
	return h
}
