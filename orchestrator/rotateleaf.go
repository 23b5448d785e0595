package orchestrator

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/k3s"
	"github.com/fleetcert/fleetcert/remote"
)

// RotateLeaf is `fleetcert rotate`: leaf certificates renewed node by node
// with k3s certificate rotate. CAs and the service-account key are never
// touched, and tokens do not change.
type RotateLeaf struct {
	// Services limits the renewal (k3s certificate rotate --service).
	Services []string
	// OnlyExpiringWithin > 0 touches only nodes holding a leaf certificate
	// that expires within it.
	OnlyExpiringWithin time.Duration
	// KeepBackups > 0 prunes the tls-<unix> copies k3s makes beyond the
	// newest KeepBackups.
	KeepBackups int
}

func (*RotateLeaf) Command() string { return CmdRotate }

// RunCluster renews one cluster's leaf certificates:
//
//  1. preflight: the primary reachable (it holds the lock and run state);
//     every other reachable node checked as rotate-ca checks it, except
//     for the version; the nodes to renew picked (OnlyExpiringWithin).
//     Unreachable nodes are skipped and reported, not refused: renewing
//     the others is still worth it, and the cluster's outcome says failed
//     so that a scheduled job alerts.
//  2. lock: take the cluster lock and open (or resume) the run state.
//  3. servers, one at a time (etcd members must not go down together):
//     stop k3s, k3s certificate rotate, start; gates (the renewed
//     certificates written again, readyz, node Ready); prune old backups.
//     When the servers' certificates have expired already, the cluster is
//     down anyway and no server reaches etcd quorum alone: every server is
//     stopped, renewed and started, then all are waited for together.
//  4. agents, in batches: the same, without readyz.
//  5. cleanup: record the outcome, release the lock.
func (op *RotateLeaf) RunCluster(ctx context.Context, c inventory.Cluster, nodes []*Node, o *RunOptions) *ClusterReport {
	l := &leafRotation{clusterOp: newClusterOp(CmdRotate, c, nodes, o), RotateLeaf: op, selected: map[string]bool{}}
	phases := []phase{leafPreflight{l}, lockPhase{l.clusterOp}, leafRollPhase{l, inventory.Server},
		leafRollPhase{l, inventory.Agent}, cleanupPhase{l.clusterOp, nil}}
	err := runPhases(ctx, l.run, phases)
	if err == nil && len(l.skipped) > 0 {
		err = fmt.Errorf("%d node(s) unreachable and not renewed: %s", len(l.skipped), strings.Join(l.skipped, ", "))
	}
	l.finish(err)
	return l.report
}

// leafRotation is `fleetcert rotate` on one cluster.
type leafRotation struct {
	*clusterOp
	*RotateLeaf
	selected map[string]bool
	skipped  []string // unreachable nodes
	// together: the servers' certificates have expired, so they are
	// renewed and started together, then waited for together.
	together bool
}

type leafPreflight struct{ l *leafRotation }

func (leafPreflight) Title() string { return "preflight" }

// Run checks the reachable nodes and picks the nodes to renew.
func (p leafPreflight) Run(_ context.Context, run *clusterRun) error {
	l := p.l
	var found problems
	primary := run.Primary()
	if primary.Err != nil {
		return l.refuse(fmt.Sprintf("%s (primary, holds the cluster lock): not reachable: %v", primary.Name, primary.Err))
	}
	l.readRunState(primary, found.bad)
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
		if w := l.OnlyExpiringWithin; w > 0 && !expiresWithin(n, now.Add(w)) && !l.resumes(n) {
			continue
		}
		l.checkNode(n, nodeCheck{}, found.bad)
		l.selected[n.Name] = true
	}
	if len(found) > 0 {
		return l.refuse(found...)
	}
	if len(l.selected) == 0 {
		run.Info(nil, "no node holds a leaf certificate expiring within %s", l.OnlyExpiringWithin)
	}
	if expired := expiredServers(run.Nodes, now); len(expired) > 0 {
		l.together = true
		l.warn(nil, "the servers' certificates have expired (%s): every selected server is stopped, renewed and started "+
			"before any is waited for, since with expired etcd peer certificates no server reaches quorum alone; agents follow",
			strings.Join(expired, "; "))
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

func (p leafRollPhase) ShouldRun(run *clusterRun) bool {
	return !p.l.abandoning() && len(p.nodes(run)) > 0
}

func (p leafRollPhase) nodes(run *clusterRun) []*Node {
	var nodes []*Node
	for _, n := range run.Nodes {
		if n.Role == p.role && p.l.selected[n.Name] {
			nodes = append(nodes, n)
		}
	}
	return nodes
}

// Run renews servers one at a time (etcd members must not go down
// together) and agents in batches. Servers whose certificates have expired
// are down already: they are renewed together, then waited for together,
// which is k3s's own runbook for an expired cluster.
func (p leafRollPhase) Run(ctx context.Context, run *clusterRun) error {
	nodes := p.nodes(run)
	batch := 1
	switch {
	case p.role == inventory.Agent:
		batch = agentBatch(p.l.opts.AgentBatch, len(nodes))
	case p.l.together:
		batch = len(nodes)
	}
	return p.l.inBatches(ctx, nodes, batch, p.l.renewStep())
}

// renewStep renews a node's certificates and restarts it; its gates wait
// for the renewed files.
func (l *leafRotation) renewStep() restartStep {
	leafs := map[*Node][]string{}
	return restartStep{
		begin: func(ctx context.Context, n *Node) (time.Time, bool, error) {
			services, dropped := n.Layout.ServicesFor(l.Services, n.Snapshot)
			if len(dropped) > 0 {
				l.warn(n, "services not on this node, left out: %s", strings.Join(dropped, ", "))
			}
			if len(l.Services) > 0 && len(services) == 0 {
				return time.Time{}, true, nil
			}
			if len(l.Services) == 0 {
				services = nil // let k3s pick the node's own set
			}
			t0, backup, err := l.renewNode(ctx, n, services)
			if backup != "" {
				l.nodeRep[n.Name].Files = []string{backup}
			}
			leafs[n] = n.Layout.RenewedLeafs(services, n.Snapshot)
			return t0, false, err
		},
		gates: func(ctx context.Context, n *Node, t0 time.Time) error {
			return l.leafGates(ctx, n, t0, leafs[n])
		},
		after: l.pruneBackups,
	}
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
		gates = append(gates, gate{"apiserver ready", func(ctx context.Context) (bool, string, error) { return readyz(ctx, n) }})
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
	keep := l.KeepBackups
	if keep <= 0 {
		return nil
	}
	dir := n.Layout.LeafBackupsDir()
	return l.run.Wet(n, fmt.Sprintf("prune %s/tls-* to the newest %d", dir, keep), func() error {
		return runOK(ctx, n, fmt.Sprintf(pruneBackupsScript, remote.Quote(dir), keep))
	})
}

// nodeReady reports whether n is Ready as the cluster (asked through
// server) sees it.
func nodeReady(ctx context.Context, server, n *Node) (bool, string, error) {
	nodes, err := clusterNodes(ctx, server)
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
