package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/k3s"
	"github.com/fleetcert/fleetcert/remote"
)

// CmdRotate renews leaf certificates node by node.
const CmdRotate = "rotate"

// LeafOptions configure `fleetcert rotate`.
type LeafOptions struct {
	// Services limits the rotation (k3s certificate rotate --service).
	Services []string
	// OnlyExpiringWithin > 0 touches only nodes holding a leaf certificate
	// that expires within it.
	OnlyExpiringWithin time.Duration
	// KeepBackups > 0 prunes the tls-<unix> copies k3s makes beyond the
	// newest KeepBackups.
	KeepBackups int
}

// leafRotation is `fleetcert rotate` on one cluster: per node stop k3s,
// `k3s certificate rotate`, start, gate; servers one at a time, then agents
// in batches. It shares the lock, run state and gates with rotate-ca;
// unreachable nodes are skipped and reported instead of refusing the
// cluster, since renewing the others is still worth it.
type leafRotation struct {
	*rotation
	selected map[string]bool
	skipped  []string // unreachable nodes
}

func newLeafRotation(c inventory.Cluster, nodes []*Node, opts *Options) *leafRotation {
	return &leafRotation{rotation: newRotation(c, nodes, opts), selected: map[string]bool{}}
}

func (l *leafRotation) phases() []Phase {
	return []Phase{leafPreflight{l}, lockPhase{l.rotation}, leafRollPhase{l, inventory.Server},
		leafRollPhase{l, inventory.Agent}, leafCleanup{l}}
}

type leafPreflight struct{ l *leafRotation }

func (leafPreflight) Title() string { return "preflight" }

// Run checks the reachable nodes as rotate-ca does and picks the nodes to
// rotate; the primary must be reachable, since the lock and state live there.
func (p leafPreflight) Run(ctx context.Context, run *ClusterRun) error {
	l := p.l
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	primary := run.Primary()
	if primary.Err != nil {
		return &RefusedError{Cluster: run.Cluster.Name, Problems: []string{fmt.Sprintf(
			"%s (primary, holds the cluster lock): not reachable: %v", primary.Name, primary.Err)}}
	}
	if err := l.readRunState(primary, bad); err != nil {
		return err
	}
	if l.abandoning() {
		return nil // only the unfinished run's state is closed, in cleanup
	}
	now := l.opts.now()
	for _, n := range run.Nodes {
		if n.Err != nil {
			l.skipped = append(l.skipped, n.Name)
			l.nodeRep[n.Name].Outcome, l.nodeRep[n.Name].Error = "unreachable", n.Err.Error()
			l.warn(n, "not reachable, skipped: %v", n.Err)
			continue
		}
		if w := l.opts.Leaf.OnlyExpiringWithin; w > 0 && !expiresWithin(n, now.Add(w)) && !l.resumes(n) {
			continue
		}
		l.checkNode(n, bad)
		l.selected[n.Name] = true
	}
	if len(problems) > 0 {
		return &RefusedError{Cluster: run.Cluster.Name, Problems: problems}
	}
	if len(l.selected) == 0 {
		run.Info(nil, "no node holds a leaf certificate expiring within %s", l.opts.Leaf.OnlyExpiringWithin)
	}
	return nil
}

// expiresWithin reports whether n holds a leaf certificate that expires
// before deadline.
func expiresWithin(n *Node, deadline time.Time) bool {
	for _, c := range n.Facts.Certs {
		if !c.Bundle && c.NotAfter.Before(deadline) {
			return true
		}
	}
	return false
}

type leafRollPhase struct {
	l    *leafRotation
	role inventory.Role
}

func (p leafRollPhase) Title() string { return string(p.role) + "s" }

func (p leafRollPhase) ShouldRun(run *ClusterRun) bool {
	if p.l.abandoning() {
		return false
	}
	for _, n := range run.Nodes {
		if n.Role == p.role && p.l.selected[n.Name] {
			return true
		}
	}
	return false
}

// Run renews servers one at a time (etcd members must not go down
// together) and agents in batches.
func (p leafRollPhase) Run(ctx context.Context, run *ClusterRun) error {
	var nodes []*Node
	for _, n := range run.Nodes {
		if n.Role == p.role && p.l.selected[n.Name] {
			nodes = append(nodes, n)
		}
	}
	batch := 1
	if p.role == inventory.Agent {
		batch = batchSize(p.l.opts.AgentBatch, len(nodes))
	}
	for i := 0; i < len(nodes); i += batch {
		if err := errors.Join(ctx.Err(), p.l.lockLost()); err != nil {
			return err
		}
		if err := p.l.renewBatch(ctx, nodes[i:min(i+batch, len(nodes))]); err != nil {
			return err
		}
	}
	return nil
}

// renewBatch renews a batch together, then waits for all of it.
func (l *leafRotation) renewBatch(ctx context.Context, nodes []*Node) error {
	type started struct {
		n         *Node
		t0, begin time.Time
		leafs     []string
		backup    string
	}
	var waiting []started
	for _, n := range nodes {
		begin := time.Now()
		if l.state != nil && l.state.Nodes[n.Name] == StepDone {
			l.nodeRep[n.Name].Outcome = "already-done"
			continue
		}
		services, dropped := n.Layout.ServicesFor(l.opts.Leaf.Services, n.Snapshot)
		if len(dropped) > 0 {
			l.warn(n, "services not on this node, left out: %s", strings.Join(dropped, ", "))
		}
		if len(l.opts.Leaf.Services) > 0 && len(services) == 0 {
			continue
		}
		if len(l.opts.Leaf.Services) == 0 {
			services = nil // let k3s pick the node's own set
		}
		t0, backup, err := l.renewNode(ctx, n, services)
		if err != nil {
			return l.nodeFailed(n, err)
		}
		if l.opts.DryRun {
			l.nodeRep[n.Name].Outcome, l.nodeRep[n.Name].Duration = "would-restart", time.Since(begin)
			continue
		}
		waiting = append(waiting, started{n, t0, begin, n.Layout.RenewedLeafs(services, n.Snapshot), backup})
	}
	errs := make([]error, len(waiting))
	done := make(chan struct{})
	for i, w := range waiting {
		go func() {
			errs[i] = l.leafGates(ctx, w.n, w.t0, w.leafs)
			done <- struct{}{}
		}()
	}
	for range waiting {
		<-done
	}
	var failed []error
	for i, w := range waiting {
		l.nodeRep[w.n.Name].Duration = time.Since(w.begin) // the batch's gates end together
		if errs[i] != nil {
			failed = append(failed, l.nodeFailed(w.n, errs[i]))
			continue
		}
		l.nodeRep[w.n.Name].Outcome = "restarted"
		if w.backup != "" {
			l.nodeRep[w.n.Name].Files = []string{w.backup}
		}
		if err := l.pruneBackups(ctx, w.n); err != nil {
			failed = append(failed, err)
			continue
		}
		if err := l.setStep(ctx, w.n, StepDone); err != nil {
			return err
		}
	}
	if len(failed) > 0 {
		return failed[0]
	}
	return nil
}

// renewDeadline bounds one node's stop, certificate rotate and start.
const renewDeadline = 10 * time.Minute

// backupLine is how k3s reports the copy `certificate rotate` made.
var backupLine = regexp.MustCompile(`backed up certificates to (\S+)`)

// renewNode stops k3s (certificate rotate needs it down), renews, and
// starts it without waiting. Returns the node's clock before the start
// and the backup k3s made.
func (l *leafRotation) renewNode(ctx context.Context, n *Node, services []string) (time.Time, string, error) {
	lay := n.Layout
	what := "stop " + lay.UnitName() + ", k3s certificate rotate"
	if len(services) > 0 {
		what += " --service " + strings.Join(services, ",")
	}
	what += ", start"
	var t0 time.Time
	var backup string
	err := l.run.Wet(n, what, func() error {
		if l.state != nil {
			l.state.Nodes[n.Name] = StepRestarted
			if err := l.saveState(ctx); err != nil {
				return err
			}
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

// leafGates: k3s came back (files it writes at every start rewritten),
// every renewed certificate exists again, written since the restart, and
// the node is healthy (readyz on servers, Ready for agents).
func (l *leafRotation) leafGates(ctx context.Context, n *Node, t0 time.Time, leafs []string) error {
	gates := []gate{{"renewed certificates written", func(ctx context.Context) (bool, string, error) {
		files, err := k3s.ReadFiles(ctx, n.Conn, leafs)
		if err != nil {
			return false, "", err
		}
		for _, p := range leafs {
			f, ok := files[p]
			if !ok || f.MTime.Before(t0) {
				return false, p + " not renewed yet", nil
			}
		}
		return true, "", nil
	}}}
	if n.Role == inventory.Server {
		gates = append(gates, gate{"apiserver ready", func(ctx context.Context) (bool, string, error) { return Readyz(ctx, n) }})
	}
	gates = append(gates, gate{"node Ready", func(ctx context.Context) (bool, string, error) {
		return nodeReady(ctx, l.run.Primary(), n)
	}})
	return l.passGates(ctx, n, gates)
}

// pruneBackupsScript removes all but the newest N tls-<unix> copies.
const pruneBackupsScript = `cd %s || exit 0
ls -d tls-[0-9]* 2>/dev/null | sort -t- -k2 -n | head -n -%d | while read -r d; do rm -rf -- "$d"; done`

func (l *leafRotation) pruneBackups(ctx context.Context, n *Node) error {
	keep := l.opts.Leaf.KeepBackups
	if keep <= 0 {
		return nil
	}
	dir := n.Layout.LeafBackupsDir()
	return l.run.Wet(n, fmt.Sprintf("prune %s/tls-* to the newest %d", dir, keep), func() error {
		res, err := n.Conn.Run(ctx, fmt.Sprintf(pruneBackupsScript, remote.Quote(dir), keep), nil)
		if err != nil {
			return err
		}
		return res.Err()
	})
}

type leafCleanup struct{ l *leafRotation }

func (leafCleanup) Title() string { return "cleanup" }

// Run finishes the run state and releases the lock.
func (p leafCleanup) Run(ctx context.Context, run *ClusterRun) error {
	l := p.l
	primary := run.Primary()
	if l.abandoning() {
		if err := l.abandonPrior(ctx); err != nil {
			return err
		}
	} else if l.state != nil && !l.opts.DryRun {
		l.state.Outcome, l.state.Error = OutcomeDone, ""
		if err := finishState(ctx, primary.Conn, primary.Layout, l.state, l.opts.now()); err != nil {
			return err
		}
	}
	if l.lock != nil {
		err := l.lock.Release(ctx)
		l.lock = nil
		if err != nil {
			return fmt.Errorf("release cluster lock: %w", err)
		}
	}
	return nil
}

// run drives the phases; nodes skipped as unreachable make the cluster's
// outcome a failure, so that a scheduled job alerts, though the others
// were renewed.
func (l *leafRotation) runPhases(ctx context.Context) error {
	err := RunPhases(ctx, l.run, l.phases())
	if err == nil && len(l.skipped) > 0 {
		err = fmt.Errorf("%d node(s) unreachable and not renewed: %s", len(l.skipped), strings.Join(l.skipped, ", "))
	}
	return err
}

// nodeReady reports whether n is Ready as the cluster (asked through
// server) sees it.
func nodeReady(ctx context.Context, server, n *Node) (bool, string, error) {
	nodes, err := ClusterNodes(ctx, server)
	if err != nil {
		return false, "", err
	}
	for _, cn := range nodes {
		if cn.Name == n.NodeName() {
			return cn.Ready, fmt.Sprintf("node %s Ready=%v", cn.Name, cn.Ready), nil
		}
	}
	return false, "node " + n.NodeName() + " not listed", nil
}

// parseUnix reads a `date +%s` line.
func parseUnix(s string) (time.Time, error) {
	sec, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("node clock: %q: %w", s, err)
	}
	return time.Unix(sec, 0), nil
}
