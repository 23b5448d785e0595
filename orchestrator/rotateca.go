package orchestrator

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/k3s"
	"github.com/fleetcert/fleetcert/pki"
	"github.com/fleetcert/fleetcert/remote"
)

// RotateCA is `fleetcert rotate-ca`: new cluster CAs, loaded through
// k3s certificate rotate-ca (docs/k3s-behaviour.md#rotation-kinds).
type RotateCA struct {
	// Force loads material that does not chain to the current root: a new
	// unrelated root, or the operator's.
	Force bool
	CA    CAInput
	RotationOptions
	// Export collects each cluster's new CA bundle (and, with
	// ExportTokens, its tokens) into the report.
	Export       bool
	ExportTokens bool
	// Material, when set, replaces generation with PKI: given the mode and
	// the primary's current files it returns the new set. Benchmarks and
	// tests hand out material made once, so that key generation is not
	// what they measure.
	Material func(mode Mode, current pki.CASet) (pki.CASet, error)
}

// RotateSAKey is `fleetcert rotate-sa-key`: a new service-account signing
// key ahead of the current ones, loaded the same way. Only servers hold
// service.key, so only servers restart.
type RotateSAKey struct {
	// KeepKeys > 0 keeps only that many current keys after the new one.
	KeepKeys int
	RotationOptions
}

// RotationOptions are what both rotations that load material share.
type RotationOptions struct {
	NoSnapshot         bool
	AllowUnlistedNodes bool
	PKI                pki.Env
}

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

// Mode is how a CA rotation makes its new material (docs/k3s-behaviour.md#rotation-kinds).
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

func (*RotateCA) Command() string    { return CmdRotateCA }
func (*RotateSAKey) Command() string { return CmdRotateSAKey }

// RunCluster rotates one cluster's CAs:
//
//  1. preflight: every node reachable, on systemd, running a k3s that has
//     certificate rotate-ca, its clock close enough; every server holding
//     the CA the primary serves and every secure token pinning it; no node
//     in the cluster that the inventory does not list. Only reads.
//  2. material: read the primary's CA files and make the new set (new
//     roots cross-signed by the old ones; new CAs under the operator's
//     root; or, with Force, an unrelated root), validate it with k3s's own
//     rules and compute the hash tokens will pin. Still only reads.
//  3. lock: take the cluster lock and open the run state on the primary
//     (or resume an unfinished run with its target).
//  4. backup: the token files of every node, server/tls and server/token.
//  5. etcd-snapshot: with embedded etcd, before anything is loaded.
//  6. stage+load: write the new files on the primary and load them with
//     k3s certificate rotate-ca.
//  7. servers, one at a time: rewrite tokens, restart, gates (server/token
//     rewritten, serves the new CA, readyz, disk holds what was loaded).
//  8. agents, in batches: rewrite tokens, restart, gates (downloaded the
//     new CA, node Ready).
//  9. verify: every node read again; collect the export.
//  10. cleanup: remove the staging directory, record the rotation (its
//     finish time is what rotate-ca --complete's soak is measured from)
//     and the outcome, release the lock.
func (op *RotateCA) RunCluster(ctx context.Context, c inventory.Cluster, nodes []*Node, o *RunOptions) *ClusterReport {
	r := newLoadRotation(CmdRotateCA, c, nodes, o, op.RotationOptions)
	r.makeSet = op.makeSet
	r.export, r.exportTokens = op.Export, op.ExportTokens
	return r.drive(ctx, []phase{
		loadPreflight{r}, materialPhase{r}, lockPhase{r.clusterOp}, backupPhase{r, everyNode},
		snapshotPhase{r}, loadPhase{r}, serversPhase{r}, agentsPhase{r}, verifyPhase{r, everyNode},
		cleanupPhase{r.clusterOp, r.unstageAndRecord},
	})
}

// RunCluster rotates one cluster's service-account key:
//
//  1. preflight, as rotate-ca's.
//  2. material: service.key with a new RSA key first and the current keys
//     after it (tokens they signed stay valid), KeepKeys applied.
//  3. lock, 4. backup (servers), 5. etcd-snapshot, 6. stage+load: as
//     rotate-ca's.
//  7. servers, one at a time: restart, gates. Tokens do not change.
//  8. verify (servers), 9. cleanup.
//
// Agents hold no copy of service.key: they are neither backed up nor
// restarted.
func (op *RotateSAKey) RunCluster(ctx context.Context, c inventory.Cluster, nodes []*Node, o *RunOptions) *ClusterReport {
	r := newLoadRotation(CmdRotateSAKey, c, nodes, o, op.RotationOptions)
	r.makeSet = func(current pki.CASet) (Mode, pki.CASet, error) {
		sk, err := op.PKI.RotateServiceKey(current[pki.ServiceKeyFile], op.KeepKeys)
		return ModeServiceKey, pki.CASet{pki.ServiceKeyFile: sk}, err
	}
	return r.drive(ctx, []phase{
		loadPreflight{r}, materialPhase{r}, lockPhase{r.clusterOp}, backupPhase{r, serversOnly},
		snapshotPhase{r}, loadPhase{r}, serversPhase{r}, verifyPhase{r, serversOnly},
		cleanupPhase{r.clusterOp, r.unstage},
	})
}

// loadRotation is one cluster's rotate-ca or rotate-sa-key: new material
// loaded on the primary, then servers (and agents) restarted onto it.
type loadRotation struct {
	*clusterOp
	RotationOptions
	// makeSet chooses the mode and makes the new set from the primary's
	// current files (whole, or only the files that change).
	makeSet      func(current pki.CASet) (Mode, pki.CASet, error)
	export       bool
	exportTokens bool

	mode    Mode
	current pki.CASet // the primary's CA files, keys in memory only
	staged  pki.CASet // what is loaded: only the files that change
	served  string    // the hash the cluster served before the run
	target  string    // the hash every secure token must pin afterwards
}

func newLoadRotation(command string, c inventory.Cluster, nodes []*Node, o *RunOptions, ro RotationOptions) *loadRotation {
	r := &loadRotation{clusterOp: newClusterOp(command, c, nodes, o), RotationOptions: ro}
	r.initState = func(s *RunState) { s.Mode, s.OldHash, s.TargetHash = string(r.mode), r.served, r.target }
	return r
}

// drive runs the phases and adds what the rotation decided to the report.
func (r *loadRotation) drive(ctx context.Context, phases []phase) *ClusterReport {
	rep := r.clusterOp.drive(ctx, phases)
	rep.Mode, rep.OldHash, rep.TargetHash = r.mode, r.served, r.target
	rep.Staged = r.staged.Names()
	return rep
}

// hashChanges reports whether tokens must be rewritten.
func (r *loadRotation) hashChanges() bool { return r.target != r.served }

// tokenHashes are the hashes a token may pin while this run is under way.
func (r *loadRotation) tokenHashes() []string {
	if r.target == "" || r.target == r.served {
		return []string{r.served}
	}
	return []string{r.served, r.target}
}

// nodeScope says which nodes a phase covers.
type nodeScope bool

const (
	everyNode   nodeScope = true
	serversOnly nodeScope = false
)

func (s nodeScope) covers(n *Node) bool { return bool(s) || n.Role == inventory.Server }

// ---- phases -------------------------------------------------------------

// loadPreflight checks everything that can be known before touching the
// cluster (docs/architecture.md#preflight): every node, then the served CA, the
// tokens and unlisted nodes.
type loadPreflight struct{ r *loadRotation }

func (loadPreflight) Title() string { return "preflight" }
func (p loadPreflight) Run(ctx context.Context, _ *clusterRun) error {
	r := p.r
	var found problems
	primary := r.run.Primary()
	if primary.Err == nil {
		r.readRunState(primary, found.bad)
	}
	for _, n := range r.run.Nodes {
		if n.Err != nil {
			found.bad("%s: not reachable: %v (rotation needs every node of the cluster)", n.Name, n.Err)
			continue
		}
		r.checkNode(n, nodeCheck{rotateCA: true}, found.bad)
	}
	if expired := expiredServers(r.run.Nodes, r.opts.now()); len(expired) > 0 {
		found.bad("%s", expiredRefusal(expired))
	}
	if len(found) > 0 {
		return r.refuse(found...)
	}
	r.served = r.servedCA(ctx, found.bad)
	r.checkTokens(r.allowedHashes(r.served), found.bad)
	r.checkSpace(ctx, found.bad)
	if !r.AllowUnlistedNodes {
		r.checkUnlisted(ctx, found.bad)
	}
	if len(found) > 0 {
		return r.refuse(found...)
	}
	return nil
}

type materialPhase struct{ r *loadRotation }

func (materialPhase) Title() string                { return "material" }
func (p materialPhase) ShouldRun(*clusterRun) bool { return !p.r.abandoning() }
func (p materialPhase) Run(ctx context.Context, _ *clusterRun) error {
	return p.r.material(ctx)
}

type backupPhase struct {
	r     *loadRotation
	scope nodeScope
}

func (backupPhase) Title() string                { return "backup" }
func (p backupPhase) ShouldRun(*clusterRun) bool { return !p.r.abandoning() }
func (p backupPhase) Run(ctx context.Context, run *clusterRun) error {
	for _, n := range run.Nodes {
		if !p.scope.covers(n) {
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
			return backupPaths(ctx, n, run.RunID, paths)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

type snapshotPhase struct{ r *loadRotation }

func (snapshotPhase) Title() string { return "etcd-snapshot" }

// ShouldRun: only embedded etcd has snapshots, and a loaded run took its
// snapshot already.
func (p snapshotPhase) ShouldRun(run *clusterRun) bool {
	r := p.r
	return !r.abandoning() && !r.NoSnapshot && run.Primary().Facts.EmbeddedEtcd &&
		!(r.state != nil && (r.state.Loaded || r.state.Snapshot != ""))
}

func (p snapshotPhase) Run(ctx context.Context, run *clusterRun) error {
	r := p.r
	primary := run.Primary()
	name := "fleetcert-" + run.RunID
	err := run.Wet(primary, "take etcd snapshot "+name, func() error {
		return runOK(ctx, primary, primary.Layout.EtcdSnapshotCmd(name))
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

type loadPhase struct{ r *loadRotation }

func (loadPhase) Title() string { return "stage+load" }
func (p loadPhase) ShouldRun(*clusterRun) bool {
	return !p.r.abandoning() && !(p.r.state != nil && p.r.state.Loaded)
}

func (p loadPhase) Run(ctx context.Context, run *clusterRun) error {
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
		return stageFiles(ctx, primary, dir, r.staged)
	})
	if err != nil {
		return err
	}
	force := r.mode == ModeNewRoot
	what := "load new CA material: k3s certificate rotate-ca --path=" + dir
	if force {
		what += " --force"
	}
	if err := run.Wet(primary, what, func() error { return loadCA(ctx, primary, dir, force) }); err != nil {
		return err
	}
	if r.state != nil {
		r.state.Loaded = true
		return r.saveState(ctx)
	}
	return nil
}

// unstage removes the staging directory, which holds new CA keys.
func (r *loadRotation) unstage(ctx context.Context) error {
	primary := r.run.Primary()
	dir := primary.Layout.StageDir(r.run.RunID)
	return r.run.Wet(primary, "remove staging directory "+dir, func() error { return removeDir(ctx, primary, dir) })
}

// unstageAndRecord removes the staging directory and records the CA
// rotation in its own record on the primary.
func (r *loadRotation) unstageAndRecord(ctx context.Context) error {
	if err := r.unstage(ctx); err != nil || r.opts.DryRun {
		return err
	}
	p := r.run.Primary()
	return saveCARecord(ctx, p.Conn, p.Layout, &CARecord{RunID: r.run.RunID, Mode: r.mode, TargetHash: r.target, Finished: r.opts.now()})
}

type serversPhase struct{ r *loadRotation }

func (serversPhase) Title() string                { return "servers" }
func (p serversPhase) ShouldRun(*clusterRun) bool { return !p.r.abandoning() }

// Run restarts servers one at a time, each behind its gates: restarting
// servers within seconds of each other has broken etcd (rke2 #7629).
func (p serversPhase) Run(ctx context.Context, run *clusterRun) error {
	return p.r.inBatches(ctx, run.Servers(), 1, p.r.restartStep(p.r.serverGates))
}

type agentsPhase struct{ r *loadRotation }

func (agentsPhase) Title() string { return "agents" }
func (p agentsPhase) ShouldRun(run *clusterRun) bool {
	return !p.r.abandoning() && len(run.Agents()) > 0
}

// Run restarts agents in batches after every server serves the new CA;
// agents download the CA bundle and get new leaf certs at every start.
func (p agentsPhase) Run(ctx context.Context, run *clusterRun) error {
	agents := run.Agents()
	return p.r.inBatches(ctx, agents, agentBatch(p.r.opts.AgentBatch, len(agents)), p.r.restartStep(p.r.agentGates))
}

type verifyPhase struct {
	r     *loadRotation
	scope nodeScope
}

func (verifyPhase) Title() string                { return "verify" }
func (p verifyPhase) ShouldRun(*clusterRun) bool { return !p.r.abandoning() && !p.r.opts.DryRun }
func (p verifyPhase) Run(ctx context.Context, _ *clusterRun) error {
	if err := p.r.verify(ctx, p.scope); err != nil {
		return err
	}
	if p.r.export {
		return p.r.collectExport(ctx)
	}
	return nil
}

// ---- one node -----------------------------------------------------------

// restartStep rewrites a node's tokens and restarts it; gates waits for it.
func (r *loadRotation) restartStep(gates func(context.Context, *Node, time.Time) error) restartStep {
	return restartStep{
		begin: func(ctx context.Context, n *Node) (time.Time, bool, error) {
			pending, err := r.reloadUnit(ctx, n)
			if err != nil {
				return time.Time{}, false, err
			}
			var files []string
			if !(pending && r.opts.DryRun) { // a dry run cannot plan from the reloaded view
				files, err = r.rewriteTokens(ctx, n)
			}
			r.nodeRep[n.Name].Files = files
			if err == nil {
				err = r.regenerateServing(ctx, n)
			}
			if err != nil {
				return time.Time{}, false, err
			}
			t0, err := r.restart(ctx, n)
			return t0, false, err
		},
		gates: gates,
	}
}

// reloadUnit finishes what an interrupted run left: a unit it rewrote but
// systemd has not reloaded. The node is read again afterwards, so that its
// token sources are systemd's view once more.
func (r *loadRotation) reloadUnit(ctx context.Context, n *Node) (pending bool, err error) {
	if !r.reloadFirst[n.Name] {
		return false, nil
	}
	err = r.run.Wet(n, "systemctl daemon-reload (the unit the interrupted run rewrote)", func() error {
		if err := runOK(ctx, n, k3s.DaemonReloadCmd); err != nil {
			return err
		}
		return n.refresh(ctx)
	})
	delete(r.reloadFirst, n.Name)
	return true, err
}

// regenerateServing: after a rotation of the server CA a server must
// present a serving certificate of the new CA, which k3s does not re-issue
// on its own (it never compares the certificate it keeps with the CA). The
// old one verifies against the new bundle only while that bundle still
// holds the root it was issued under: never after --force, and not after a
// second cross-signed rotation, whose bundle no longer holds the first
// root. The trigger asks k3s for a new one at the restart.
func (r *loadRotation) regenerateServing(ctx context.Context, n *Node) error {
	if n.Role != inventory.Server || !slices.Contains([]Mode{ModeCrossSign, ModeCustom, ModeNewRoot}, r.mode) {
		return nil
	}
	return r.run.Wet(n, "ask for a new :6443 serving certificate at the restart", func() error {
		return runOK(ctx, n, n.Layout.RegenerateServingCertCmd())
	})
}

// rewriteTokens makes every secure token of n pin the target hash, then
// reloads systemd if a unit changed. Returns the files changed.
func (r *loadRotation) rewriteTokens(ctx context.Context, n *Node) ([]string, error) {
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
	if err := n.refresh(ctx); err != nil {
		return files, err
	}
	more, err := r.rewriteTokensOnce(ctx, n)
	return append(files, more...), err
}

func (r *loadRotation) rewriteTokensOnce(ctx context.Context, n *Node) ([]string, error) {
	plan, err := planTokens(n, r.target, r.tokenHashes())
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
	// The run state says so before the first write: a connection that
	// drops after a write but before its daemon-reload must leave a record
	// that the change on the node is this run's own.
	if slices.ContainsFunc(plan, k3s.FileRewrite.Changed) && !r.opts.DryRun {
		if err := r.setStep(ctx, n, StepRewritten); err != nil {
			return nil, err
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
			return runOK(ctx, n, k3s.DaemonReloadCmd)
		})
		if err != nil {
			return files, err
		}
	}
	return files, nil
}

func (r *loadRotation) restart(ctx context.Context, n *Node) (time.Time, error) {
	var t0 time.Time
	err := r.run.Wet(n, "restart "+n.Layout.UnitName()+".service", func() error {
		var err error
		t0, err = restartUnit(ctx, n)
		return err
	})
	if err == nil && !r.opts.DryRun {
		err = r.setStep(ctx, n, StepRestarted)
	}
	return t0, err
}
