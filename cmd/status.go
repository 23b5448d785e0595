package cmd

import (
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/orchestrator"
)

func (a *app) newStatusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show each cluster's lock, unfinished run and last run, as recorded on its primary server",
		Long: `status reads the state fleetcert keeps on each cluster's primary server
(<data-dir>/server/fleetcert): who holds the cluster lock, an unfinished run
(id, command, mode, target hash, how far each node got) and the outcome of
the last finished run. It connects to primaries only and changes nothing.
Exit 1 when a cluster has an unfinished run or a stale lock.`,
		Example: `  fleetcert status -i hosts.yaml
  fleetcert status -i hosts.yaml -o json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error { return a.runStatus(c) },
	}
}

func (a *app) runStatus(c *cobra.Command) error {
	if a.g.output != "table" && a.g.output != "json" {
		return usageErrorf("-o/--output must be table or json for status, not %q", a.g.output)
	}
	_, clusters, err := a.loadInventory()
	if err != nil {
		return err
	}
	primaries := make([]inventory.Cluster, len(clusters))
	for i, cl := range clusters {
		primaries[i] = cl
		primaries[i].Nodes = []inventory.Node{cl.Primary()}
	}
	nodes := a.connect(c.Context(), primaries)
	defer orchestrator.CloseAll(nodes)
	now := time.Now()
	code := ExitOK
	statuses := make([]orchestrator.ClusterStatus, len(nodes))
	for i, n := range nodes {
		statuses[i] = orchestrator.StatusOf(n.Cluster, n, now)
		switch {
		case !statuses[i].Reachable:
			code = worst(code, ExitUnreachable)
		case statuses[i].NeedsAttention():
			code = worst(code, ExitFailed)
		}
	}
	if a.g.output == "json" {
		if err := writeJSON(a.stdout, struct {
			SchemaVersion int `json:"schemaVersion"`
			Clusters      any `json:"clusters"`
		}{orchestrator.SchemaVersion, statuses}); err != nil {
			return err
		}
	} else {
		printStatus(a, statuses, now)
	}
	return withCode(code, nil)
}

func printStatus(a *app, statuses []orchestrator.ClusterStatus, now time.Time) {
	unreachable, attention, locked := 0, 0, 0
	for _, s := range statuses {
		switch {
		case !s.Reachable:
			unreachable++
		case s.NeedsAttention():
			attention++
		}
		if s.Lock != nil {
			locked++
		}
	}
	fmt.Fprintf(a.stdout, "FLEET: %d cluster(s), %d unreachable, %d locked, %d needing attention (unfinished run or stale lock)\n",
		len(statuses), unreachable, locked, attention)
	w := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "CLUSTER\tPRIMARY\tLOCK\tUNFINISHED RUN\tLAST RUN")
	for _, s := range statuses {
		if !s.Reachable {
			fmt.Fprintf(w, "%s\t%s\tUNREACHABLE\t-\t-\n", s.Cluster, s.Primary)
			continue
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", s.Cluster, s.Primary, lockCell(s, now), runCell(s.Unfinished, true), runCell(s.LastRun, false))
	}
	w.Flush()
	for _, s := range statuses {
		if s.Error != "" {
			fmt.Fprintf(a.stdout, "%s: %s\n", s.Cluster, s.Error)
		}
	}
}

func lockCell(s orchestrator.ClusterStatus, now time.Time) string {
	if s.Lock == nil {
		return "free"
	}
	l := s.Lock
	state := fmt.Sprintf("held by %s (%s, pid %d) until %s", l.RunID, l.Owner, l.PID, l.Expires.Format("15:04:05"))
	if s.LockStale {
		state = fmt.Sprintf("STALE since %s: %s (%s)", now.Sub(l.Expires).Round(time.Second), l.RunID, l.Owner)
	}
	return state
}

// runCell sums up a run: id, command and mode, target hash, and for an
// unfinished run how far its nodes got.
func runCell(r *orchestrator.RunState, progress bool) string {
	if r == nil {
		return "-"
	}
	s := fmt.Sprintf("%s %s", r.RunID, r.Command)
	if r.Mode != "" {
		s += " (" + r.Mode + ")"
	}
	if r.TargetHash != "" {
		s += " -> " + shortHash(r.TargetHash)
	}
	if !progress {
		return s + ": " + r.Outcome
	}
	steps := map[string][]string{}
	for node, step := range r.Nodes {
		steps[string(step)] = append(steps[string(step)], node)
	}
	var parts []string
	if r.Loaded {
		parts = append(parts, "loaded")
	}
	keys := make([]string, 0, len(steps))
	for k := range steps {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s: %d", k, len(steps[k])))
	}
	if len(parts) > 0 {
		s += " [" + strings.Join(parts, ", ") + "]"
	}
	return s
}
