package orchestrator

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/pki"
)

// CompleteCA is `fleetcert rotate-ca --complete`: after a cross-signed
// rotation, retire the old roots (docs/k3s-behaviour.md#complete-cross-signed).
// Until then every bundle still ends in the old root, trusted for as long
// as it is valid: ten years for k3s's own CAs.
type CompleteCA struct {
	// MinSoak refuses a cluster whose cross-signed rotation finished less
	// than this long ago: clients need time to move to the new root.
	MinSoak time.Duration
	RotationOptions
	// Export collects each cluster's completed CA bundle (and, with
	// ExportTokens, its tokens) into the report.
	Export       bool
	ExportTokens bool
}

// ModeComplete is rotate-ca --complete's mode in reports and run state.
const ModeComplete Mode = "complete"

func (*CompleteCA) Command() string { return CmdCompleteCA }

// RunCluster retires one cluster's old roots:
//
//  1. preflight: as rotate-ca's, and the cluster prepared: every server
//     holds the primary's bundle and serves it on /cacerts, every agent's
//     downloaded CA and every secure token pins the new root.
//  2. material: per CA type, the bundle without the cross-signed and old
//     roots (pki.Complete). Refused when no CA comes from a cross-signed
//     rotation, or when that rotation finished less than MinSoak ago;
//     nothing to do (outcome done) when every CA is completed already.
//     Validated with k3s's rules; the token hash must not change.
//  3. lock, 4. backup (servers), 5. etcd-snapshot, 6. stage+load: as
//     rotate-ca's.
//  7. servers, one at a time: stop, k3s certificate rotate, start. Leaf
//     files and the serving certificate carry the chain they were issued
//     with, so renewing them is what guarantees nothing served still
//     chains to a retired root. Gates: /cacerts serves the completed
//     bundle, the chain presented on :6443 holds no retired root, the
//     apiserver is ready, the CA files on disk are the ones loaded.
//  8. agents, in batches: the same renewal; gates: agent/server-ca.crt is
//     the completed bundle, node Ready.
//  9. verify: every node read again: the hash unchanged, every bundle
//     completed, every node Ready; collect the export. Tokens are not rewritten: they pin the
//     new root, which stays.
//  10. cleanup: remove the staging directory, note the completion in the
//     CA rotation record, record the outcome, release the lock.
func (op *CompleteCA) RunCluster(ctx context.Context, c inventory.Cluster, nodes []*Node, o *RunOptions) *ClusterReport {
	r := &completion{loadRotation: newLoadRotation(CmdCompleteCA, c, nodes, o, op.RotationOptions), minSoak: op.MinSoak}
	r.export, r.exportTokens = op.Export, op.ExportTokens
	r.initState = func(s *RunState) {
		s.Mode, s.OldHash, s.TargetHash, s.Retired = string(ModeComplete), r.served, r.target, r.retired
	}
	lr := r.loadRotation
	return lr.drive(ctx, []phase{
		completePreflight{r}, completeMaterial{r}, lockPhase{r.clusterOp}, backupPhase{lr, serversOnly},
		snapshotPhase{lr}, loadPhase{lr}, renewPhase{r, inventory.Server}, renewPhase{r, inventory.Agent},
		completeVerify{r}, cleanupPhase{r.clusterOp, r.unstageAndNote},
	})
}

// completion is one cluster's rotate-ca --complete.
type completion struct {
	*loadRotation
	minSoak time.Duration
	// want holds every CA bundle as it is once completed; retired the
	// fingerprints of the roots nothing may chain to afterwards.
	want    pki.CASet
	retired []string
}

// completePreflight: rotate-ca's checks, then whether the cluster is
// prepared. A resumed run that already loaded the completed bundles is
// half-way by design: servers then hold either form.
type completePreflight struct{ r *completion }

func (completePreflight) Title() string { return "preflight" }
func (p completePreflight) Run(ctx context.Context, run *clusterRun) error {
	r := p.r
	if err := (loadPreflight{r.loadRotation}).Run(ctx, run); err != nil || r.abandoning() {
		return err
	}
	if r.prior != nil && r.prior.Loaded {
		return nil
	}
	var found problems
	primary := run.Primary()
	bundle := primary.Snapshot.Files[primary.Layout.ServerCA()].Data
	for _, n := range run.Nodes {
		if n.Role == inventory.Agent {
			if n.Facts.CAHash != r.served {
				found.bad("%s: agent/server-ca.crt pins %s, not the root the cluster serves (%s): finish the rotation first (rerun rotate-ca)",
					n.Name, short(n.Facts.CAHash), short(r.served))
			}
			continue
		}
		if held := n.Snapshot.Files[n.Layout.ServerCA()].Data; !bytes.Equal(held, bundle) {
			found.bad("%s: holds another server CA bundle than %s: finish the rotation first (rerun rotate-ca)", n.Name, primary.Name)
			continue
		}
		served, err := fetchCACerts(ctx, n)
		switch {
		case errors.Is(err, errNoTunnel):
			found.bad("%s: cannot see what it serves: completing needs SSH forwarding to the node's :6443 (AllowTcpForwarding)", n.Name)
		case err != nil:
			found.bad("%s: cannot read the CA it serves: %v", n.Name, err)
		case !bytes.Equal(served, bundle):
			found.bad("%s: serves another CA bundle than it holds on disk: it has not been restarted since the last rotation", n.Name)
		}
	}
	if len(found) > 0 {
		return r.refuse(found...)
	}
	return nil
}

// completeMaterial makes the completed bundles from the primary's files.
type completeMaterial struct{ r *completion }

func (completeMaterial) Title() string                { return "material" }
func (p completeMaterial) ShouldRun(*clusterRun) bool { return !p.r.abandoning() }
func (p completeMaterial) Run(ctx context.Context, run *clusterRun) error {
	r := p.r
	primary := run.Primary()
	current, err := readCASet(ctx, primary)
	if err != nil {
		return err
	}
	r.current, r.mode, r.target = current, ModeComplete, r.served
	c, err := pki.Complete(current)
	if errors.Is(err, pki.ErrNotCrossSigned) {
		return r.refuse("the cluster's CAs never went through a cross-signed rotation (rotate-ca): there is no old root to retire")
	}
	if err != nil {
		return r.refuse(fmt.Sprintf("cannot complete: %v", err))
	}
	r.want = completedBundles(current, c)
	if r.prior != nil && r.prior.Loaded {
		r.staged, r.retired = r.want, r.prior.Retired
		r.run.Info(primary, "completed bundles already loaded by run %s", r.prior.RunID)
		return nil
	}
	if len(c.Set) == 0 {
		run.nothingToDo("every CA is completed already: nothing to do")
		return nil
	}
	for _, cert := range c.Retired {
		r.retired = append(r.retired, fingerprint(cert.Raw))
	}
	if err := r.checkSoak(primary, current); err != nil {
		return err
	}
	r.staged = c.Set
	if err := r.validate(current); err != nil {
		return err
	}
	if h := pki.HashCA(r.staged.Overlay(current)[serverCAFile()]); h != r.served {
		return r.refuse(fmt.Sprintf("the completed server CA would change the token hash (%s -> %s): refusing", short(r.served), short(h)))
	}
	r.run.Info(primary, "%d bundles to complete, %d roots retired; token hash stays %s", len(r.staged), len(r.retired), short(r.served))
	return nil
}

// completedBundles is every CA bundle of current in its completed form.
func completedBundles(current pki.CASet, c pki.Completion) pki.CASet {
	want := pki.CASet{}
	for _, t := range pki.CATypes {
		if b, ok := c.Set[t.CertFile]; ok {
			want[t.CertFile] = b
		} else if slices.Contains(c.Complete, t.Name) {
			want[t.CertFile] = current[t.CertFile]
		}
	}
	return want
}

// checkSoak refuses to complete within MinSoak of the cross-signed
// rotation: from the cluster's CA rotation record when it names the root
// now served, else (a cluster cross-signed by k3s's own script) from the
// new self-signed root's NotBefore.
func (r *completion) checkSoak(primary *Node, current pki.CASet) error {
	since, from := time.Time{}, ""
	rec, err := readCARecord(primary.Layout, primary.Snapshot)
	switch {
	case err != nil:
		r.warn(primary, "%v; judging the soak from the new root's NotBefore", err)
	case rec != nil && rec.Mode == ModeCrossSign && rec.TargetHash == r.served:
		since, from = rec.Finished, "run "+rec.RunID+" finished"
	}
	if since.IsZero() {
		certs, err := pki.ParseCerts(current[serverCAFile()])
		if err != nil || len(certs) < 2 {
			return r.refuse("cannot tell when the cross-signed rotation happened: the server CA bundle has no new root")
		}
		since, from = certs[1].NotBefore, "the new root's NotBefore"
	}
	age := r.opts.now().Sub(since)
	if age < r.minSoak {
		return r.refuse(fmt.Sprintf("the cross-signed rotation is %s old (%s, %s), less than --min-soak %s: clients may still trust only the old root; wait, or pass --min-soak 0",
			age.Round(time.Minute), from, since.UTC().Format(time.RFC3339), r.minSoak))
	}
	return nil
}

// renewPhase renews one role's nodes onto the completed bundles: servers
// one at a time, agents in batches.
type renewPhase struct {
	r    *completion
	role inventory.Role
}

func (p renewPhase) Title() string { return string(p.role) + "s" }
func (p renewPhase) ShouldRun(run *clusterRun) bool {
	return !p.r.abandoning() && len(run.byRole(p.role)) > 0
}

func (p renewPhase) Run(ctx context.Context, run *clusterRun) error {
	r := p.r
	nodes := run.byRole(p.role)
	batch, gates := 1, r.completedServer
	if p.role == inventory.Agent {
		batch, gates = agentBatch(r.opts.AgentBatch, len(nodes)), r.completedAgent
	}
	return r.inBatches(ctx, nodes, batch, restartStep{
		begin: func(ctx context.Context, n *Node) (time.Time, bool, error) {
			t0, backup, err := r.renewNode(ctx, n, nil)
			if backup != "" {
				r.nodeRep[n.Name].Files = []string{backup}
			}
			return t0, false, err
		},
		gates: gates,
	})
}

// completedServer: the restarted server serves the completed bundle, its
// serving chain holds no retired root, its apiserver is ready and its
// disk holds what was loaded.
func (r *completion) completedServer(ctx context.Context, n *Node, t0 time.Time) error {
	bundle := r.want[serverCAFile()]
	return r.passGates(ctx, n, []gate{
		{"restarted (server/token rewritten)", func(ctx context.Context) (bool, string, error) {
			return rewrittenSince(ctx, n, n.Layout.ServerToken(), t0)
		}},
		{"serves the completed CA bundle", func(ctx context.Context) (bool, string, error) {
			served, err := fetchCACerts(ctx, n)
			return bytes.Equal(served, bundle), fmt.Sprintf("/cacerts holds %d certificates", countCerts(served)), err
		}},
		{"serving chain holds no retired root", func(ctx context.Context) (bool, string, error) {
			chain, err := servingChain(ctx, n)
			if err != nil {
				return false, "", err
			}
			for _, c := range chain {
				if slices.Contains(r.retired, fingerprint(c.Raw)) {
					return false, "the :6443 chain still holds " + c.Subject.CommonName, nil
				}
			}
			return len(chain) > 0, fmt.Sprintf("the :6443 chain holds %d certificates", len(chain)), nil
		}},
		{"apiserver ready", func(ctx context.Context) (bool, string, error) { return readyz(ctx, n) }},
		{"CA files on disk match the loaded material", func(ctx context.Context) (bool, string, error) {
			return r.diskMatchesStaged(ctx, n)
		}},
	})
}

// completedAgent: the agent downloaded the completed bundle after its
// restart and is Ready.
func (r *completion) completedAgent(ctx context.Context, n *Node, t0 time.Time) error {
	bundle := r.want[serverCAFile()]
	return r.passGates(ctx, n, []gate{
		{"downloaded the completed CA bundle (agent/server-ca.crt)", func(ctx context.Context) (bool, string, error) {
			f, ok, saw, err := readSince(ctx, n, n.Layout.AgentServerCA(), t0)
			if err != nil || !ok {
				return false, saw, err
			}
			return bytes.Equal(f.Data, bundle), fmt.Sprintf("agent/server-ca.crt holds %d certificates", countCerts(f.Data)), nil
		}},
		{"node Ready", func(ctx context.Context) (bool, string, error) { return nodeReady(ctx, r.run.Primary(), n) }},
	})
}

// completeVerify reads every node again: rotate-ca's verification (the
// hash, server/token, tokens, Ready), and every bundle completed.
type completeVerify struct{ r *completion }

func (completeVerify) Title() string                { return "verify" }
func (p completeVerify) ShouldRun(*clusterRun) bool { return !p.r.abandoning() && !p.r.opts.DryRun }
func (p completeVerify) Run(ctx context.Context, run *clusterRun) error {
	r := p.r
	if err := r.verify(ctx, everyNode); err != nil {
		return err
	}
	var found problems
	for _, n := range run.Nodes {
		held := map[string][]byte{}
		if n.Role == inventory.Agent {
			held[serverCAFile()] = n.Snapshot.Files[n.Layout.AgentServerCA()].Data
		} else {
			for name := range r.want {
				held[name] = n.Snapshot.Files[path.Join(n.Layout.ServerTLSDir(), name)].Data
			}
		}
		for name, data := range held {
			if !bytes.Equal(data, r.want[name]) {
				found.bad("%s: %s is not the completed bundle (%d certificates)", n.Name, name, countCerts(data))
			}
		}
	}
	if len(found) > 0 {
		return fmt.Errorf("verification failed:\n  - %s", strings.Join(found, "\n  - "))
	}
	if r.export {
		return r.collectExport(ctx)
	}
	return nil
}

// unstageAndNote removes the staging directory and notes the completion
// in the cluster's CA rotation record.
func (r *completion) unstageAndNote(ctx context.Context) error {
	if err := r.unstage(ctx); err != nil || r.opts.DryRun {
		return err
	}
	p := r.run.Primary()
	rec, err := readCARecord(p.Layout, p.Snapshot)
	if err != nil || rec == nil || rec.TargetHash != r.target {
		rec = &CARecord{Mode: ModeCrossSign, TargetHash: r.target}
	}
	rec.Completed = r.opts.now()
	return saveCARecord(ctx, p.Conn, p.Layout, rec)
}

func fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

func countCerts(pemData []byte) int {
	certs, _ := pki.ParseCerts(pemData)
	return len(certs)
}
