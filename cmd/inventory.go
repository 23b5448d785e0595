package cmd

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/orchestrator"
)

func (a *app) newInventoryCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "inventory",
		Short: "Validate and list the inventory (hosts.yaml)",
		Long: `Validate and list the inventory file given with -i (or FLEETCERT_INVENTORY).
Both work offline: nothing connects to any node.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return usageErrorf("inventory needs a subcommand: validate or list")
		},
	}
	c.AddCommand(a.newInventoryValidateCmd(), a.newInventoryListCmd())
	return c
}

func (a *app) newInventoryValidateCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "validate",
		Short: "Check the inventory and report every problem (exit 2 when there are any)",
		Example: `  fleetcert inventory validate -i hosts.yaml
  generate-inventory | fleetcert inventory validate -i -`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error { return a.runInventoryValidate() },
	}
}

func (a *app) newInventoryListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the selected nodes with every setting resolved",
		Example: `  fleetcert inventory list -i hosts.yaml --selector ring=canary
  fleetcert inventory list -i hosts.yaml --cluster edge-berlin-01 -o json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error { return a.runInventoryList() },
	}
}

// runInventoryValidate prints a one-line summary of a valid inventory. The
// --cluster and --selector flags are checked too, so a script can validate
// the selection it is about to use.
func (a *app) runInventoryValidate() error {
	inv, selected, err := a.loadInventory()
	if err != nil {
		return err
	}
	servers, agents := inventory.Count(inv.Clusters)
	clusters := plural(len(inv.Clusters), "cluster")
	if len(selected) < len(inv.Clusters) {
		clusters += fmt.Sprintf(" (%d selected)", len(selected))
	}
	fmt.Fprintf(a.stdout, "%s: valid: %s, %s, %s\n", inv.File, clusters, plural(servers, "server"), plural(agents, "agent"))
	return nil
}

// runInventoryList prints the selected nodes as a table or as JSON.
func (a *app) runInventoryList() error {
	if a.g.output != "table" && a.g.output != "json" {
		return usageErrorf("-o/--output must be table or json for inventory list, not %q", a.g.output)
	}
	_, selected, err := a.loadInventory()
	if err != nil {
		return err
	}
	if a.g.output == "json" {
		return writeNodesJSON(a.stdout, selected)
	}
	return writeNodesTable(a.stdout, selected)
}

// loadInventory reads the inventory named by -i ("-" for standard input)
// and applies --cluster and --selector. Every failure is a usage error
// (exit 2), since nothing has been touched yet. Every command that works on
// the fleet starts here.
func (a *app) loadInventory() (*inventory.Inventory, []inventory.Cluster, error) {
	inv, err := a.readInventory()
	if err != nil {
		return nil, nil, err
	}
	selected, err := inv.Select(a.g.clusters, a.g.selectors)
	if err != nil {
		return nil, nil, usageError(err)
	}
	return inv, selected, nil
}

// readInventory loads and validates the -i file. An invalid inventory's
// error lists every problem, one per line, below a count.
func (a *app) readInventory() (*inventory.Inventory, error) {
	var inv *inventory.Inventory
	var err error
	switch a.g.inventory {
	case "":
		return nil, usageErrorf("no inventory: pass -i/--inventory FILE (- for standard input) or set FLEETCERT_INVENTORY")
	case "-":
		var data []byte
		if a.stdin != nil {
			if data, err = io.ReadAll(a.stdin); err != nil {
				return nil, usageErrorf("reading the inventory from standard input: %w", err)
			}
		}
		inv, err = inventory.Parse("<stdin>", data)
	default:
		inv, err = inventory.Load(a.g.inventory)
	}
	var problems *inventory.Errors
	switch {
	case errors.As(err, &problems):
		n := len(problems.Problems)
		return nil, usageErrorf("invalid inventory, %s:\n%w", plural(n, "problem"), err)
	case err != nil:
		return nil, usageErrorf("inventory: %w", err)
	}
	return inv, nil
}

// nodeJSON is one line of `inventory list -o json`. Its field names are a
// published interface: add fields, never rename them.
type nodeJSON struct {
	ID string `json:"id"`
	inventory.Node
	Labels map[string]string `json:"labels"`
}

func writeNodesJSON(w io.Writer, clusters []inventory.Cluster) error {
	out := []nodeJSON{}
	for _, c := range clusters {
		for _, n := range c.Nodes {
			out = append(out, nodeJSON{ID: n.ID(), Node: n, Labels: c.Labels})
		}
	}
	return writeJSON(w, struct {
		SchemaVersion int        `json:"schemaVersion"`
		Nodes         []nodeJSON `json:"nodes"`
	}{orchestrator.SchemaVersion, out})
}

// writeJSON writes one indented JSON document: every JSON output of
// fleetcert goes through here.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func writeNodesTable(w io.Writer, clusters []inventory.Cluster) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CLUSTER\tNODE\tROLE\tHOST\tPORT\tUSER\tPRIMARY\tDATA-DIR\tSERVICE\tLABELS")
	for _, c := range clusters {
		labels := formatLabels(c.Labels)
		for _, n := range c.Nodes {
			port := "-"
			if n.SSH.Port != 0 {
				port = strconv.Itoa(n.SSH.Port)
			}
			primary := "-"
			if n.Primary {
				primary = "yes"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.Name, n.Name, n.Role, n.Host,
				port, orDash(n.SSH.User), primary, n.DataDir, n.Service, labels)
		}
	}
	return tw.Flush()
}

// formatLabels writes labels as a selector would match them, sorted by key.
func formatLabels(labels map[string]string) string {
	if len(labels) == 0 {
		return "-"
	}
	var b strings.Builder
	for i, k := range slices.Sorted(maps.Keys(labels)) {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k + "=" + labels[k])
	}
	return b.String()
}

// orDash shows an unset value (left to ~/.ssh/config) as "-".
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}
