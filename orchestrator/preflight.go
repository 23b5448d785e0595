package orchestrator

import (
	"context"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/k3s"
	"github.com/fleetcert/fleetcert/pki"
)

// preflight checks everything that can be known before touching the
// cluster (docs/design.md#preflight). Every problem is collected and the cluster
// is refused with all of them: exit 3, nothing changed.
func (r *rotation) preflight(ctx context.Context) error {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	primary := r.run.Primary()
	if primary.Err == nil {
		if err := r.readRunState(primary, bad); err != nil {
			return err
		}
	}
	for _, n := range r.run.Nodes {
		r.checkNode(n, bad)
	}
	if len(problems) > 0 {
		return &RefusedError{Cluster: r.run.Cluster.Name, Problems: problems}
	}
	r.checkServedCA(ctx, primary, bad)
	r.checkTokens(bad)
	if !r.opts.AllowUnlistedNodes {
		r.checkUnlisted(ctx, primary, bad)
	}
	if len(problems) > 0 {
		return &RefusedError{Cluster: r.run.Cluster.Name, Problems: problems}
	}
	return nil
}

// checkNode: reachable, systemd, k3s new enough, the role the inventory
// says, running.
func (r *rotation) checkNode(n *Node, bad func(string, ...any)) {
	if n.Err != nil {
		bad("%s: not reachable: %v (rotation needs every node of the cluster)", n.Name, n.Err)
		return
	}
	f := n.Facts
	switch f.Init {
	case "systemd":
	case "openrc":
		bad("%s: OpenRC node; this version of fleetcert drives systemd units only", n.Name)
	default:
		bad("%s: no systemd found (init %q)", n.Name, f.Init)
	}
	if !f.Installed {
		bad("%s: k3s not found on the node", n.Name)
		return
	}
	v, err := k3s.ParseVersion(f.Version)
	switch {
	case err != nil:
		bad("%s: cannot read the k3s version %q: %v", n.Name, f.Version, err)
	case r.opts.Command == CmdRotate:
		// certificate rotate is older than every version a fleet runs
		// (Nov 2021): the rotate-ca gates below do not apply.
	case !k3s.SupportsRotateCA(v):
		bad("%s: k3s %s is too old for certificate rotate-ca (needs v1.26.2+k3s1, v1.25.7+k3s1, v1.24.11+k3s1, v1.23.17+k3s1 or later in its line)", n.Name, f.Version)
	default:
		for _, w := range k3s.KnownRotationBugs(v) {
			r.warn(n, "%s", w)
		}
	}
	r.checkClock(n, bad)
	want := k3s.RoleServer
	if n.Role == inventory.Agent {
		want = k3s.RoleAgent
	}
	if f.Role != want {
		bad("%s: the inventory lists it as %s but the node is %s (data dir %s)", n.Name, want, roleWord(f.Role), f.DataDir)
	}
	if f.UnitState != "active" {
		if r.resumes(n) {
			// This run restarted (or stopped) it and was interrupted or
			// failed its gate: resuming restarts it again behind the gates.
			r.warn(n, "%s.service is %q; the unfinished run %s restarts it again", f.Unit, f.UnitState, r.prior.RunID)
		} else {
			bad("%s: %s.service is %q, not active; fix the node first", n.Name, f.Unit, f.UnitState)
		}
	}
}

// checkClock refuses a node whose clock is behind by more than new
// certificates are backdated (pki.Backdate, as k3s backdates its own): it
// would see them as not yet valid. A smaller skew above check's threshold
// is a warning.
func (r *rotation) checkClock(n *Node, bad func(string, ...any)) {
	skew := n.Facts.ClockSkew
	switch {
	case skew < -pki.Backdate:
		bad("%s: its clock is %s the controller's, more than the %s new certificates are backdated: they would not yet be valid there; fix its time sync (NTP) first",
			n.Name, skewWords(skew), pki.Backdate)
	case skew.Abs() > DefaultMaxClockSkew:
		r.warn(n, "its clock is %s the controller's; fix its time sync (NTP)", skewWords(skew))
	}
}

// resumes reports whether n is a node the unfinished run this one resumes
// had already restarted (or stopped) when it ended.
func (r *rotation) resumes(n *Node) bool {
	if r.prior == nil || r.opts.Abandon || r.prior.Command != r.opts.Command {
		return false
	}
	step := r.prior.Nodes[n.Name]
	return step == StepRestarted || step == StepRewritten
}

func roleWord(r k3s.Role) string {
	if r == "" {
		return "neither (no k3s data dir)"
	}
	return "a" + map[k3s.Role]string{k3s.RoleServer: " server", k3s.RoleAgent: "n agent"}[r]
}

// readRunState picks up the lock and an unfinished run from the primary's
// snapshot. A run of the same command resumes with its id and target; one
// of another command blocks until finished or abandoned.
func (r *rotation) readRunState(primary *Node, bad func(string, ...any)) error {
	current, _, err := readState(primary.Layout, primary.Snapshot)
	if err != nil {
		bad("%s: %v", primary.Name, err)
		return nil
	}
	if f, ok := primary.Snapshot.Files[path.Join(primary.Layout.FleetcertDir(), "lock")]; ok {
		r.lockFile = f.Data
	}
	if current == nil {
		return nil
	}
	if current.Command != r.opts.Command && !r.opts.Abandon {
		bad("an unfinished %s run %s (started %s) holds this cluster; finish it by rerunning %s, or drop it with --abandon",
			current.Command, current.RunID, current.Started.Format("2006-01-02 15:04"), current.Command)
		return nil
	}
	if r.opts.Abandon && current.Loaded {
		bad("run %s (%s) already loaded new CA material into the cluster's datastore: the next start of any server switches to it, "+
			"and tokens not yet rewritten would stop working; finish it by rerunning %s instead of abandoning it",
			current.RunID, current.Command, current.Command)
		return nil
	}
	r.prior = current
	if !r.opts.Abandon {
		r.run.RunID = current.RunID
		r.report.Resumed = true
		r.run.Info(nil, "resuming unfinished run %s (target %s)", current.RunID, short(current.TargetHash))
	}
	return nil
}

// checkServedCA learns the hash the cluster serves now, from the primary's
// running process, and checks every server holds the same CA.
func (r *rotation) checkServedCA(ctx context.Context, primary *Node, bad func(string, ...any)) {
	served, via, err := ServedHash(ctx, primary)
	if err != nil {
		bad("%s: cannot read the CA it serves: %v", primary.Name, err)
		return
	}
	r.served = served
	if r.prior != nil && r.prior.OldHash != "" {
		// The primary may already serve the target: the old hash is the
		// one the interrupted run started from.
		r.served = r.prior.OldHash
	}
	r.run.Info(primary, "serves CA %s (from %s)", short(served), via)
	allowed := r.allowedHashesWithPrior()
	for _, n := range r.run.Servers() {
		if !slices.Contains(allowed, n.Facts.CAHash) {
			bad("%s: holds CA %s, but the cluster serves %s", n.Name, short(n.Facts.CAHash), short(served))
		}
	}
}

// checkTokens: every secure token must pin the CA the cluster serves, or,
// while a run is unfinished, that run's target. A token pinning anything
// else would be rewritten blind or left to break at the next restart.
func (r *rotation) checkTokens(bad func(string, ...any)) {
	allowed := r.allowedHashesWithPrior()
	for _, n := range r.run.Nodes {
		if err := n.Facts.TokenErr; err != nil {
			bad("%s: token: %v", n.Name, err)
		}
		if err := n.Facts.AgentTokenErr; err != nil {
			bad("%s: agent token: %v", n.Name, err)
		}
		for _, t := range n.Facts.Tokens {
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

func (r *rotation) allowedHashesWithPrior() []string {
	allowed := []string{r.served}
	if r.prior != nil && r.prior.TargetHash != "" && r.prior.TargetHash != r.served {
		allowed = append(allowed, r.prior.TargetHash)
	}
	return allowed
}

// checkUnlisted refuses a cluster with nodes the inventory does not know:
// they would keep the old token and fail at their next restart.
func (r *rotation) checkUnlisted(ctx context.Context, primary *Node, bad func(string, ...any)) {
	listed, err := ClusterNodes(ctx, primary)
	if err != nil {
		bad("%v", err)
		return
	}
	known := map[string]bool{}
	for _, n := range r.run.Nodes {
		known[n.Name], known[n.NodeName()] = true, true
	}
	for _, cn := range listed {
		if !known[cn.Name] {
			bad("node %s is in the cluster but not in the inventory: it would keep a token that stops working; add it, or pass --allow-unlisted-nodes", cn.Name)
		}
	}
}

func (r *rotation) warn(n *Node, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if n != nil {
		msg = n.Name + ": " + msg
	}
	r.report.Warnings = append(r.report.Warnings, msg)
	r.run.Warn(n, format, args...)
}

func shorts(hashes []string) []string {
	out := make([]string, len(hashes))
	for i, h := range hashes {
		out[i] = short(h)
	}
	return out
}
