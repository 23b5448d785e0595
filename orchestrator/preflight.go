package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/k3s"
	"github.com/fleetcert/fleetcert/pki"
	"github.com/fleetcert/fleetcert/remote"
)

// Checks the operations' preflight phases are made of. Each adds what it
// finds wrong through bad; a preflight refuses the cluster with all of
// them at once (exit 3, nothing changed).

// nodeCheck is what checkNode asks of a node beyond reachability.
type nodeCheck struct {
	// rotateCA: k3s must be new enough for certificate rotate-ca. (Leaf
	// renewal needs only certificate rotate, older than any version a
	// fleet runs: November 2021.)
	rotateCA bool
}

// checkNode: systemd, k3s installed (and new enough), the clock close
// enough, the role the inventory says, the unit running.
func (op *clusterOp) checkNode(n *Node, want nodeCheck, bad func(string, ...any)) {
	f := n.Facts
	switch f.Init {
	case k3s.InitSystemd, k3s.InitOpenRC:
	case "both":
		bad("%s: both systemd (/run/systemd/system) and OpenRC (/run/openrc/softlevel) claim to run the node; fleetcert cannot tell which one runs k3s", n.Name)
	default:
		bad("%s: neither systemd nor OpenRC booted the node (no /run/systemd/system, no /run/openrc/softlevel); fleetcert drives k3s through one of them", n.Name)
	}
	if !f.Installed {
		bad("%s: %s not found on the node", n.Name, n.Layout.ProductName())
		return
	}
	op.checkVersion(n, want, bad)
	op.checkClock(n, bad)
	role := k3s.RoleServer
	if n.Role == inventory.Agent {
		role = k3s.RoleAgent
	}
	if f.Role != role {
		bad("%s: the inventory lists it as %s but the node is %s (data dir %s)", n.Name, role, roleWord(f.Role), f.DataDir)
	}
	if !f.Running() {
		svc := n.Layout.ServiceLabel()
		switch {
		case op.resumes(n):
			// This run restarted (or stopped) it and was interrupted or
			// failed its gate: resuming restarts it again behind the gates.
			op.warn(n, "%s is %q; the unfinished run %s restarts it again", svc, f.UnitState, op.prior.RunID)
		case !want.rotateCA && len(expiredLeafs(n, op.opts.now())) > 0:
			// Expired certificates are why it is down; renewing them is
			// the fix.
			op.warn(n, "%s is %q and its certificates have expired; renewing them starts it again", svc, f.UnitState)
		default:
			bad("%s: %s is %q, not running; fix the node first", n.Name, svc, f.UnitState)
		}
	}
}

func (op *clusterOp) checkVersion(n *Node, want nodeCheck, bad func(string, ...any)) {
	v, err := k3s.ParseVersion(n.Facts.Version)
	switch {
	case err != nil:
		bad("%s: cannot read the k3s version %q: %v", n.Name, n.Facts.Version, err)
	case !want.rotateCA:
	case !k3s.SupportsRotateCA(v):
		bad("%s: k3s %s is too old for certificate rotate-ca (needs v1.26.2+k3s1, v1.25.7+k3s1, v1.24.11+k3s1, v1.23.17+k3s1 or later in its line)", n.Name, n.Facts.Version)
	default:
		for _, w := range k3s.KnownRotationBugs(v) {
			op.warn(n, "%s", w)
		}
	}
}

// checkClock refuses a node whose clock is behind by more than new
// certificates are backdated (pki.Backdate, as k3s backdates its own): it
// would see them as not yet valid. A smaller skew above check's threshold
// is a warning.
func (op *clusterOp) checkClock(n *Node, bad func(string, ...any)) {
	skew := n.Facts.ClockSkew
	switch {
	case skew < -pki.Backdate:
		bad("%s: its clock is %s the controller's, more than the %s new certificates are backdated: they would not yet be valid there; fix its time sync (NTP) first",
			n.Name, skewWords(skew), pki.Backdate)
	case skew.Abs() > DefaultMaxClockSkew:
		op.warn(n, "its clock is %s the controller's; fix its time sync (NTP)", skewWords(skew))
	}
}

func roleWord(r k3s.Role) string {
	if r == "" {
		return "neither (no k3s data dir)"
	}
	return "a" + map[k3s.Role]string{k3s.RoleServer: " server", k3s.RoleAgent: "n agent"}[r]
}

// servedCA learns the hash the cluster serves now, from the primary's
// running process, and checks every server holds the same CA (or, while a
// run is unfinished, that run's target). It returns the hash tokens pin
// before the run: an interrupted run's old hash, since the primary may
// already serve its target.
func (op *clusterOp) servedCA(ctx context.Context, bad func(string, ...any)) string {
	primary := op.run.Primary()
	served, via, err := servedHash(ctx, primary)
	if err != nil {
		bad("%s: cannot read the CA it serves: %v", primary.Name, err)
		return ""
	}
	old := served
	if op.prior != nil && op.prior.OldHash != "" {
		old = op.prior.OldHash
	}
	op.run.Info(primary, "serves CA %s (from %s)", short(served), via)
	allowed := op.allowedHashes(old)
	for _, n := range op.run.Servers() {
		if !slices.Contains(allowed, n.Facts.CAHash) {
			bad("%s: holds CA %s, but the cluster serves %s", n.Name, short(n.Facts.CAHash), short(served))
		}
	}
	return old
}

// allowedHashes are the hashes a token may pin before this run changes
// anything: the served one, and an unfinished run's target.
func (op *clusterOp) allowedHashes(served string) []string {
	allowed := []string{served}
	if op.prior != nil && op.prior.TargetHash != "" && op.prior.TargetHash != served {
		allowed = append(allowed, op.prior.TargetHash)
	}
	return allowed
}

// checkTokens: every secure token must pin one of the allowed hashes. A
// token pinning anything else would be rewritten blind or left to break at
// the next restart.
func (op *clusterOp) checkTokens(allowed []string, bad func(string, ...any)) {
	for _, n := range op.run.Nodes {
		if err := n.Facts.TokenErr; err != nil {
			bad("%s: token: %v", n.Name, err)
		}
		if err := n.Facts.AgentTokenErr; err != nil {
			bad("%s: agent token: %v", n.Name, err)
		}
		for _, t := range n.Facts.Tokens {
			if t.Err != nil && op.ownUnreloadedWrite(n, t.Err) {
				continue
			}
			if t.Err != nil {
				bad("%s: %s", n.Name, t.String())
				continue
			}
			if t.Secure() && !slices.Contains(allowed, t.Token.CAHash) {
				bad("%s: %s:%d %s pins CA %s, which this cluster does not serve (%s)", n.Name, t.File, t.Line, t.Key,
					short(t.Token.CAHash), strings.Join(shorts(allowed), " or "))
			}
		}
	}
}

// ownUnreloadedWrite accounts for a unit systemd has not reloaded since
// its files changed, when the change is the unfinished run's own: it
// rewrote the node's tokens and was stopped before its daemon-reload. The
// resumed run reloads systemd before it restarts the node; anything else
// changed meanwhile would be reloaded with it, so it is said.
func (op *clusterOp) ownUnreloadedWrite(n *Node, err error) bool {
	if !errors.Is(err, k3s.ErrNeedDaemonReload) || op.prior == nil || op.opts.Abandon ||
		op.prior.Command != op.command || op.prior.Nodes[n.Name] != StepRewritten {
		return false
	}
	if op.reloadFirst == nil {
		op.reloadFirst = map[string]bool{}
	}
	op.reloadFirst[n.Name] = true
	op.warn(n, "its unit changed since systemd loaded it, as the unfinished run %s left it after rewriting its tokens; "+
		"systemd is reloaded before the restart", op.prior.RunID)
	return true
}

// checkUnlisted refuses a cluster with nodes the inventory does not know:
// they would keep the old token and fail at their next restart.
func (op *clusterOp) checkUnlisted(ctx context.Context, bad func(string, ...any)) {
	listed, err := clusterNodes(ctx, op.run.Primary())
	if err != nil {
		bad("%v", err)
		return
	}
	known := map[string]bool{}
	for _, n := range op.run.Nodes {
		known[n.Name], known[n.NodeName()] = true, true
	}
	for _, cn := range listed {
		if !known[cn.Name] {
			bad("node %s is in the cluster but not in the inventory: it would keep a token that stops working; add it, or pass --allow-unlisted-nodes", cn.Name)
		}
	}
}

// checkSpace refuses a primary without room for what a rotation writes
// there before loading: the backup of server/tls and the staged material
// (each at most the size of server/tls), the run state and the lock. A
// disk that filled half-way would stop the run after it took the lock.
func (op *clusterOp) checkSpace(ctx context.Context, bad func(string, ...any)) {
	p := op.run.Primary()
	out, err := remote.Output(ctx, p.Conn, p.Layout.SpaceCmd())
	var free, tls int
	if err == nil {
		_, err = fmt.Sscan(string(out), &free, &tls)
	}
	if err != nil {
		bad("%s: cannot tell the free disk space: %v", p.Name, err)
		return
	}
	if need := 2*tls + spareKiB; free < need {
		bad("%s: %d KiB free where fleetcert keeps its files (%s), but the backup and the staged material need about %d KiB: free some space first",
			p.Name, free, p.Layout.FleetcertDir(), need)
	}
}

// spareKiB is the room kept beyond the backup and the staged material, for
// the run state, the lock and their temporary copies.
const spareKiB = 1024

// problems collects what the checks find.
type problems []string

func (p *problems) bad(format string, args ...any) { *p = append(*p, fmt.Sprintf(format, args...)) }

func shorts(hashes []string) []string {
	out := make([]string, len(hashes))
	for i, h := range hashes {
		out[i] = short(h)
	}
	return out
}
