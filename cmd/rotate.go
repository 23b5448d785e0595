package cmd

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/orchestrator"
	"github.com/fleetcert/fleetcert/orchestrator/rollout"
	"github.com/fleetcert/fleetcert/pki"
)

// rolloutFlags are the flags every mutating command shares.
type rolloutFlags struct {
	healthTimeout duration
	agentBatch    string
	waves         string
	order         string
	canary        []string
	maxFailures   string
	wavePause     duration
	shard         string
	window        string
	report        string
	noSnapshot    bool
	allowUnlisted bool
	abandon       bool
	forceUnlock   bool
	export        string
	exportTokens  bool
}

func (f *rolloutFlags) register(fs *pflag.FlagSet) {
	f.healthTimeout = duration(10 * time.Minute)
	fs.Var(&f.healthTimeout, "health-timeout", "deadline for each node's health gates after its restart")
	fs.StringVar(&f.agentBatch, "agent-batch", "1", "agents restarted together: a number or a percentage of the cluster's agents")
	fs.BoolVar(&f.allowUnlisted, "allow-unlisted-nodes", false, "go on although the cluster has nodes the inventory does not list")
	fs.BoolVar(&f.abandon, "abandon", false, "drop an unfinished run on the selected clusters instead of resuming it")
	fs.BoolVar(&f.forceUnlock, "force-unlock", false, "remove a cluster lock left by a run that is known to be dead")
	fs.StringVar(&f.waves, "waves", "100%", "cluster waves as Ansible's serial: counts or percentages of all selected clusters, the last repeating (e.g. 1,10%,100%)")
	fs.StringVar(&f.order, "order", "inventory", "order of clusters before waves: inventory, name or label:KEY")
	fs.StringArrayVar(&f.canary, "canary-selector", nil, "clusters matching these labels (key=value, repeatable) form wave 1")
	fs.StringVar(&f.maxFailures, "max-failures", "0", "failed clusters tolerated (N or P%) before no new cluster starts")
	fs.Var(&f.wavePause, "wave-pause", "soak time between waves, ended by a health pass over the finished clusters")
	fs.StringVar(&f.shard, "shard", "", "I/N: only this controller's stable share of the clusters (0-based, as JOB_COMPLETION_INDEX)")
	fs.StringVar(&f.window, "maintenance-window", "", `no cluster starts outside it, e.g. "Sat 02:00-06:00 Europe/Berlin"`)
	fs.StringVar(&f.report, "report", "", "write the JSON report to this file (atomically; also on failure and interrupt)")
}

// rollout turns the flags into the fleet's waves and limits.
func (f *rolloutFlags) rollout(clusters []inventory.Cluster) (rollout.Plan, error) {
	var ro rollout.Plan
	if f.shard != "" {
		i, n, err := rollout.ParseShard(f.shard)
		if err != nil {
			return ro, usageError(err)
		}
		clusters = rollout.Shard(clusters, i, n)
	}
	steps, err := rollout.ParseWaves(f.waves)
	if err != nil {
		return ro, usageError(err)
	}
	order, err := rollout.ParseOrder(f.order)
	if err != nil {
		return ro, usageError(err)
	}
	var canary inventory.Selector
	if len(f.canary) > 0 {
		if canary, err = inventory.ParseSelector(f.canary...); err != nil {
			return ro, usageErrorf("--canary-selector: %v", err)
		}
	}
	if ro.Budget, err = rollout.ParseFailureBudget(f.maxFailures); err != nil {
		return ro, usageError(err)
	}
	if f.window != "" {
		w, err := rollout.ParseWindow(f.window)
		if err != nil {
			return ro, usageErrorf("--maintenance-window: %v", err)
		}
		ro.Window = &w
	}
	if f.report != "" {
		if st, err := os.Stat(filepath.Dir(f.report)); err != nil || !st.IsDir() {
			return ro, usageErrorf("--report %s: its directory does not exist", f.report)
		}
	}
	ro.WavePause = f.wavePause.value()
	ro.Waves = rollout.Waves(clusters, steps, order, canary)
	return ro, nil
}

type rotateCAFlags struct {
	rolloutFlags
	issuerFlags
	force    bool
	complete bool
	minSoak  duration
}

func (a *app) newRotateCACmd() *cobra.Command {
	var f rotateCAFlags
	c := &cobra.Command{
		Use:   "rotate-ca",
		Short: "Rotate the cluster CAs on every selected cluster, rewriting join tokens and restarting nodes behind health gates",
		Long: `rotate-ca makes new CA material on the controller, loads it with
k3s certificate rotate-ca on one server per cluster, rewrites the CA hash in
every secure join token on every node (env files, unit ExecStart, drop-ins,
config.yaml and its drop-ins, token files), then restarts servers one at a
time and agents after them, each behind health gates.

The mode follows the CA files on the primary server:
  default or previously cross-signed CAs  new roots cross-signed by the old ones (tokens change)
  custom CA (--root-ca with --root-key, or with --intermediate-ca/--intermediate-key)
                                          new cluster CAs under your root (tokens unchanged)
  --force                                 an unrelated new root (tokens change, pods must restart;
                                          the etcd CAs are left as they are)

A rerun of an interrupted run resumes it with the same target. --dry-run
gathers facts, makes and validates the material, and lists every change.

After a cross-signed rotation every bundle still ends in the old root, which
stays trusted until it expires. Once clients have moved to the new root,
--complete retires it: it loads bundles of intermediate + new root only, then
renews every node's leaf certificates (stop, k3s certificate rotate, start) so
that nothing served still chains to the old root. Tokens do not change.
--min-soak (default 24h) refuses clusters rotated more recently than that.`,
		Example: `  fleetcert rotate-ca -i hosts.yaml --dry-run
  fleetcert rotate-ca -i hosts.yaml --cluster edge-berlin-01
  fleetcert rotate-ca -i hosts.yaml --root-ca root.pem --root-key root.key
  fleetcert rotate-ca -i hosts.yaml --complete`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error { return a.runRotateCA(c, f) },
	}
	fs := c.Flags()
	f.rolloutFlags.register(fs)
	f.issuerFlags.register(fs)
	fs.BoolVar(&f.force, "force", false, "load CAs that do not chain to the current root (needs --yes or a confirmation)")
	fs.BoolVar(&f.noSnapshot, "no-snapshot", false, "skip the etcd snapshot before loading new material")
	fs.StringVar(&f.export, "export", "", "write each cluster's new server CA bundle and hash under DIR/<cluster>/")
	fs.BoolVar(&f.exportTokens, "export-tokens", false, "with --export, also write the new tokens (mode 0600)")
	fs.BoolVar(&f.complete, "complete", false, "retire the old roots after a cross-signed rotation: bundles of intermediate + new root only, leaf certificates renewed")
	f.minSoak = duration(24 * time.Hour)
	fs.Var(&f.minSoak, "min-soak", "with --complete: refuse clusters whose cross-signed rotation finished less than this long ago (0: no wait)")
	return c
}

type rotateSAFlags struct {
	rolloutFlags
	keepKeys int
}

func (a *app) newRotateSAKeyCmd() *cobra.Command {
	var f rotateSAFlags
	c := &cobra.Command{
		Use:   "rotate-sa-key",
		Short: "Rotate the service-account signing key: new key first, old keys kept; servers restart, agents do not",
		Long: `rotate-sa-key stages a service.key holding a new RSA key followed by the
current keys (tokens signed by them stay valid), loads it with k3s certificate
rotate-ca on one server per cluster and restarts the servers one at a time.
Agents and pods need no restart. --keep-keys N drops the oldest keys beyond
N, never the current signing key.`,
		Example: `  fleetcert rotate-sa-key -i hosts.yaml
  fleetcert rotate-sa-key -i hosts.yaml --keep-keys 2`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error { return a.runRotateSAKey(c, f) },
	}
	f.register(c.Flags())
	c.Flags().IntVar(&f.keepKeys, "keep-keys", 0, "keep at most N of the current keys after the new one (0: all)")
	return c
}

func (a *app) runRotateCA(c *cobra.Command, f rotateCAFlags) error {
	if f.complete {
		return a.runCompleteCA(c, f)
	}
	if c.Flags().Changed("min-soak") {
		return usageErrorf("--min-soak applies to --complete only")
	}
	in, err := f.caInput()
	if err != nil {
		return err
	}
	if f.exportTokens && f.export == "" {
		return usageErrorf("--export-tokens needs --export DIR")
	}
	opts, err := a.rolloutOptions(f.rolloutFlags)
	if err != nil {
		return err
	}
	op := &orchestrator.RotateCA{CA: in, Force: f.force, RotationOptions: f.rotationOptions(),
		Export: f.export != "", ExportTokens: f.exportTokens}
	warning := ""
	if f.force {
		warning = "--force loads a CA that does not chain to the current one: every secure token changes and pods must be restarted to trust the new root."
	}
	return a.rollout(c, op, opts, &f.rolloutFlags, f.export, warning)
}

// runCompleteCA is rotate-ca --complete. It makes no new CA, so the CA
// flags do not apply.
func (a *app) runCompleteCA(c *cobra.Command, f rotateCAFlags) error {
	if f.force || f.given() {
		return usageErrorf("--complete retires the old roots of a cross-signed rotation; it takes no --force or CA files")
	}
	if f.minSoak.value() < 0 {
		return usageErrorf("--min-soak must be 0 or more")
	}
	if f.exportTokens && f.export == "" {
		return usageErrorf("--export-tokens needs --export DIR")
	}
	opts, err := a.rolloutOptions(f.rolloutFlags)
	if err != nil {
		return err
	}
	op := &orchestrator.CompleteCA{MinSoak: f.minSoak.value(), RotationOptions: f.rotationOptions(),
		Export: f.export != "", ExportTokens: f.exportTokens}
	warning := "--complete stops trusting the old roots: kubeconfigs, CI and pods that still trust only the old root lose access; refresh them first (--export of the cross-signed rotation)."
	return a.rollout(c, op, opts, &f.rolloutFlags, f.export, warning)
}

func (a *app) runRotateSAKey(c *cobra.Command, f rotateSAFlags) error {
	if f.keepKeys < 0 {
		return usageErrorf("--keep-keys must be 0 (keep all) or more")
	}
	opts, err := a.rolloutOptions(f.rolloutFlags)
	if err != nil {
		return err
	}
	op := &orchestrator.RotateSAKey{KeepKeys: f.keepKeys, RotationOptions: f.rotationOptions()}
	return a.rollout(c, op, opts, &f.rolloutFlags, "", "")
}

// caInput reads and checks the operator's CA files before anything
// connects: a key that does not match its certificate, or an intermediate
// not signed by the root, is bad input (exit 2).
func (f rotateCAFlags) caInput() (orchestrator.CAInput, error) {
	var in pki.CustomInput
	if err := f.read(&in); err != nil || !f.given() {
		return orchestrator.CAInput{}, err
	}
	// A trial generation checks the keys against their certificates and
	// the intermediate against the root, on the controller alone.
	if _, err := (pki.Env{}).GenerateCustom(in); err != nil {
		return orchestrator.CAInput{}, usageErrorf("CA files: %v", err)
	}
	return orchestrator.CAInput{Root: in.Root, RootKey: in.RootKey, Intermediate: in.Intermediate, IntermediateKey: in.IntermediateKey}, nil
}

// rotationOptions are the flags both rotations that load material share.
func (f *rolloutFlags) rotationOptions() orchestrator.RotationOptions {
	return orchestrator.RotationOptions{NoSnapshot: f.noSnapshot, AllowUnlistedNodes: f.allowUnlisted}
}

func (a *app) rolloutOptions(f rolloutFlags) (*orchestrator.RunOptions, error) {
	if f.healthTimeout.value() <= 0 {
		return nil, usageErrorf("--health-timeout must be positive")
	}
	batch, err := parseCountOrPercent("--agent-batch", f.agentBatch)
	if err != nil {
		return nil, err
	}
	return &orchestrator.RunOptions{
		RunID: orchestrator.NewRunID(time.Now()), DryRun: a.g.dryRun, Abandon: f.abandon, ForceUnlock: f.forceUnlock,
		HealthTimeout: f.healthTimeout.value(), AgentBatch: batch, Concurrency: a.g.concurrency,
	}, nil
}

// parseCountOrPercent reads N or P%; a percentage is returned negated
// (-P) for the caller to apply to its total.
func parseCountOrPercent(flag, s string) (int, error) {
	if p, ok := strings.CutSuffix(s, "%"); ok {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 100 {
			return 0, usageErrorf("%s: %q is not a percentage from 1%% to 100%%", flag, s)
		}
		return -n, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return 0, usageErrorf("%s: %q is not a positive number or a percentage", flag, s)
	}
	return n, nil
}

// rollout connects, runs the operation wave by wave over the selected
// clusters, reports and maps the outcome to an exit code.
//
// A run that changes nodes needs consent first (see consent): warning,
// when set, is shown with the plan.
func (a *app) rollout(c *cobra.Command, op orchestrator.Operation, opts *orchestrator.RunOptions, f *rolloutFlags, exportDir, warning string) error {
	if a.g.output != "table" && a.g.output != "json" {
		return usageErrorf("-o/--output must be table or json, not %q", a.g.output)
	}
	_, clusters, err := a.loadInventory()
	if err != nil {
		return err
	}
	plan, err := f.rollout(clusters)
	if err != nil {
		return err
	}
	ctx := c.Context()
	if err := a.consent(ctx, op, opts, plan, warning); err != nil {
		return err
	}
	clusterCount, nodeCount := plan.Clusters()
	sink, closeView := a.progressSink(clusterCount, nodeCount)
	opts.Sink = sink
	a.log = a.log.With("run", opts.RunID)
	rep := orchestrator.RunFleet(ctx, a.dialer(), op, plan, opts)
	closeView()
	code := ExitOK
	for _, r := range rep.Clusters {
		switch r.Outcome {
		case orchestrator.OutcomeRefused:
			code = worst(code, ExitRefused)
		case orchestrator.OutcomeFailed, orchestrator.OutcomeNotRun, orchestrator.OutcomeInterrupted:
			code = worst(code, ExitFailed)
		}
	}
	if ctx.Err() != nil {
		code = worst(code, interruptCode(ctx))
	}
	// The clusters are changed by now: a report or export that cannot be
	// written is a failure of the run (exit 1 at least), never "bad usage,
	// nothing touched".
	var errs []error
	if f.report != "" {
		errs = append(errs, writeReportFile(f.report, rep))
	}
	if exportDir != "" {
		errs = append(errs, writeExports(exportDir, rep.Clusters))
	}
	errs = append(errs, a.printRollout(rep))
	if err := errors.Join(errs...); err != nil {
		return withCode(worst(code, ExitFailed), err)
	}
	return withCode(code, nil)
}

// writeReportFile writes the JSON report atomically: a scheduled job's
// monitoring reads either the previous report or this one, never half.
func writeReportFile(path string, rep *orchestrator.FleetReport) error {
	data, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("--report: %w", err)
	}
	return nil
}

func (a *app) printRollout(rep *orchestrator.FleetReport) error {
	if a.g.output == "json" {
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	if rep.DryRun {
		// The same plan consent shows, every change listed.
		printPlan(a.stdout, rep, true)
	}
	printRolloutTable(a.stdout, rep.Command, rep.Clusters, rep.DryRun)
	if rep.Stopped != "" {
		fmt.Fprintf(a.stdout, "stopped starting clusters: %s (%d not started)\n", rep.Stopped, rep.Count(orchestrator.OutcomeNotRun))
	}
	return nil
}

func printRolloutTable(out io.Writer, command string, reports []*orchestrator.ClusterReport, dryRun bool) {
	// Leaf renewal changes no CA: no mode or hash columns for it.
	leaf := command == orchestrator.CmdRotate
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	if leaf {
		fmt.Fprintln(w, "CLUSTER\tOUTCOME\tNODES\tDURATION\tRUN")
	} else {
		fmt.Fprintln(w, "CLUSTER\tOUTCOME\tMODE\tOLD HASH\tNEW HASH\tNODES\tDURATION\tRUN")
	}
	for _, r := range reports {
		took := r.Finished.Sub(r.Started).Round(time.Second)
		if leaf {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", r.Cluster, r.Outcome, nodeSummary(r.Nodes), took, r.RunID)
			continue
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Cluster, r.Outcome, dash(string(r.Mode)),
			shortHash(r.OldHash), shortHash(r.TargetHash), nodeSummary(r.Nodes), took, r.RunID)
	}
	w.Flush()
	for _, r := range reports {
		for _, warn := range r.Warnings {
			fmt.Fprintf(out, "%s: warning: %s\n", r.Cluster, warn)
		}
		if r.Error != "" && !dryRun {
			fmt.Fprintf(out, "%s: %s\n", r.Cluster, r.Error)
		}
	}
}

func nodeSummary(nodes []orchestrator.NodeReport) string {
	count := map[string]int{}
	for _, n := range nodes {
		count[n.Outcome]++
	}
	var parts []string
	for _, k := range []string{"restarted", "already-done", "would-restart", "failed", "untouched"} {
		if count[k] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", count[k], k))
		}
	}
	return dash(strings.Join(parts, ", "))
}

// writeExports writes DIR/<cluster>/server-ca.crt and ca-hash (and, when
// collected, token and agent-token with mode 0600) for every finished
// cluster; one cluster's failure does not keep the others from being
// written.
func writeExports(dir string, reports []*orchestrator.ClusterReport) error {
	var errs []error
	for _, r := range reports {
		if r.Export != nil {
			errs = append(errs, writeExport(filepath.Join(dir, r.Cluster), r.Export))
		}
	}
	return errors.Join(errs...)
}

func writeExport(d string, ex *orchestrator.Export) error {
	if err := os.MkdirAll(d, 0o700); err != nil {
		return fmt.Errorf("--export: %w", err)
	}
	if err := os.Chmod(d, 0o700); err != nil { // an existing dir keeps no wider mode
		return fmt.Errorf("--export: %w", err)
	}
	files := []struct {
		name string
		data string
		mode os.FileMode
	}{
		{"server-ca.crt", string(ex.ServerCA), 0o644},
		{"ca-hash", ex.Hash + "\n", 0o644},
		{"token", ex.Token, 0o600},
		{"agent-token", ex.AgentToken, 0o600},
	}
	for _, f := range files {
		if f.data == "" {
			continue
		}
		if f.mode == 0o600 {
			f.data += "\n"
		}
		if err := writeFileAtomic(filepath.Join(d, f.name), []byte(f.data), f.mode); err != nil {
			return fmt.Errorf("--export: %w", err)
		}
	}
	return nil
}
