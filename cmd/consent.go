package cmd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/fleetcert/fleetcert/orchestrator"
	"github.com/fleetcert/fleetcert/orchestrator/rollout"
)

// Consent before a fleet-wide change: every mutating command first works
// out its plan (a dry run, the very code path of --dry-run), shows it on
// the terminal and asks. Without a terminal nobody can be asked: the run is
// refused unless --yes says the operator already agreed (scheduled jobs).

// errNoConsent is the refusal without a terminal and without --yes.
func errNoConsent(command string) error {
	return withCode(ExitRefused, fmt.Errorf("%s changes nodes and there is no terminal to ask on: nothing was changed; pass --yes for unattended runs", command))
}

// interactive reports whether the operator can be asked: stdin and stderr
// are terminals (the plan and the question go to stderr, so stdout can
// carry a JSON report).
func (a *app) interactive() bool {
	return a.stdinTTY && a.stderrTTY
}

// consent runs the operation as a dry run, prints its plan to stderr and
// asks "Proceed? [y/N]". It returns nil to go on; a refusal (exit 3) for
// no, end of input, or no terminal.
func (a *app) consent(ctx context.Context, op orchestrator.Operation, opts *orchestrator.RunOptions, plan rollout.Plan, warning string) error {
	if a.g.yes || a.g.dryRun {
		if warning != "" && a.g.yes {
			fmt.Fprintln(a.stderr, "warning: "+warning)
		}
		return nil
	}
	if !a.interactive() {
		return errNoConsent(op.Command())
	}
	fmt.Fprintln(a.stderr, "working out the plan (a dry run: nothing changes yet)...")
	dry := *opts
	dry.DryRun, dry.Sink = true, nil
	rep := orchestrator.RunFleet(ctx, a.dialer(), op, plan, &dry)
	printPlan(a.stderr, rep, a.g.verbose)
	if warning != "" {
		fmt.Fprintln(a.stderr, "warning: "+warning)
	}
	if ctx.Err() != nil {
		return withCode(interruptCode(ctx), ctx.Err())
	}
	fmt.Fprint(a.stderr, "Proceed? [y/N] ")
	answer, _ := bufio.NewReader(a.stdin).ReadString('\n')
	switch strings.ToLower(strings.TrimSpace(answer)) {
	case "y", "yes":
		return nil
	}
	fmt.Fprintln(a.stderr)
	return withCode(ExitRefused, errors.New("not confirmed: nothing was changed"))
}

// printPlan is what a mutating command would do, from its dry-run report:
// clusters per wave, per cluster the mode, the old → new token hash, what
// restarts and how many files change (every change with verbose), and the
// gates each restart must pass.
func printPlan(out io.Writer, rep *orchestrator.FleetReport, verbose bool) {
	nodes := 0
	for _, c := range rep.Clusters {
		nodes += len(c.Nodes)
	}
	fmt.Fprintf(out, "Plan: %s on %d cluster(s), %d node(s)\n", rep.Command, len(rep.Clusters), nodes)
	byName := map[string]*orchestrator.ClusterReport{}
	for _, c := range rep.Clusters {
		byName[c.Cluster] = c
	}
	for _, w := range rep.Waves {
		fmt.Fprintf(out, "wave %d: %d cluster(s)\n", w.Index, len(w.Clusters))
		for _, name := range w.Clusters {
			if c := byName[name]; c != nil {
				printClusterPlan(out, c, verbose)
			}
		}
	}
	if g := gatesOf(rep.Command); g != "" {
		fmt.Fprintf(out, "gates after each restart: %s\n", g)
	}
}

func printClusterPlan(out io.Writer, c *orchestrator.ClusterReport, verbose bool) {
	line := "  " + c.Cluster + ":"
	if c.Mode != "" {
		line += " " + string(c.Mode)
	}
	switch {
	case c.Mode == orchestrator.ModeCrossSign || c.Mode == orchestrator.ModeNewRoot:
		// Fresh roots are made when the run starts: their hash is not
		// known before, and every secure token will change.
		line += fmt.Sprintf(", token hash %s -> a new one (the new roots are made when the run starts)", shortHash(c.OldHash))
	case c.OldHash != "":
		line += fmt.Sprintf(", token hash %s (unchanged)", shortHash(c.OldHash))
	}
	var servers, agents []string
	files := map[string]bool{}
	for _, n := range c.Nodes {
		if n.Outcome == "would-restart" {
			if n.Role == "agent" {
				agents = append(agents, n.Node)
			} else {
				servers = append(servers, n.Node)
			}
		}
		for _, f := range n.Files {
			files[n.Node+":"+f] = true
		}
	}
	switch {
	case c.Outcome == orchestrator.OutcomeRefused:
		line += " REFUSED: " + c.Error
	case c.Error != "":
		line += " stops: " + c.Error
	default:
		line += fmt.Sprintf("; restarts %d server(s) one at a time, then %d agent(s); %d file(s) change", len(servers), len(agents), len(files))
	}
	fmt.Fprintln(out, line)
	if !verbose {
		return
	}
	keys := make([]string, 0, len(files))
	for f := range files {
		keys = append(keys, f)
	}
	sort.Strings(keys)
	for _, f := range keys {
		fmt.Fprintf(out, "    file %s\n", f)
	}
	for _, ch := range c.Changes {
		fmt.Fprintf(out, "    %-14s %-12s %s\n", ch.Node, ch.Phase, ch.What)
	}
}

// gatesOf names the health gates a command's restarts pass.
func gatesOf(command string) string {
	switch command {
	case orchestrator.CmdRotateCA:
		return "servers: restarted, serve the new CA, server/token pins it, apiserver ready, CA files on disk as loaded; " +
			"agents: downloaded the new CA, node Ready"
	case orchestrator.CmdCompleteCA:
		return "servers: serve the completed CA, no retired root in the :6443 chain, apiserver ready, CA files on disk as loaded; " +
			"agents: downloaded the completed CA, node Ready"
	case orchestrator.CmdRotateSAKey:
		return "servers: restarted, serve the CA, server/token pins it, apiserver ready, service.key on disk as loaded"
	case orchestrator.CmdRotate:
		return "servers: apiserver ready; agents: node Ready"
	}
	return ""
}
