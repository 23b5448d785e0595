package cmd

import (
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/fleetcert/fleetcert/k3s"
	"github.com/fleetcert/fleetcert/orchestrator"
)

func (a *app) newFactsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "facts",
		Short: "Show what each node is: version, role, unit, data dir, token places, CA hash, expiry",
		Long: `facts connects to every selected node (one SSH connection and one round trip
each, a second only for token files) and shows what fleetcert found there.
It changes nothing. Unreachable nodes are reported and do not stop the others
(exit 4 then).`,
		Example: `  fleetcert facts -i hosts.yaml
  fleetcert facts -i hosts.yaml --cluster edge-berlin-01 -o json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error { return a.runFacts(c) },
	}
}

func (a *app) runFacts(c *cobra.Command) error {
	if a.g.output != "table" && a.g.output != "json" {
		return usageErrorf("-o/--output must be table or json for facts, not %q", a.g.output)
	}
	_, clusters, err := a.loadInventory()
	if err != nil {
		return err
	}
	nodes := a.connect(c.Context(), clusters)
	defer orchestrator.CloseAll(nodes)

	reports := make([]factsReport, len(nodes))
	code := ExitOK
	for i, n := range nodes {
		reports[i] = newFactsReport(n)
		if n.Err != nil {
			code = ExitUnreachable
			a.log.Warn("node not reached", "cluster", n.Cluster, "node", n.Name, "err", n.Err)
		}
	}
	if a.g.output == "json" {
		if err := writeJSON(a.stdout, struct {
			SchemaVersion int           `json:"schemaVersion"`
			Nodes         []factsReport `json:"nodes"`
		}{orchestrator.SchemaVersion, reports}); err != nil {
			return err
		}
	} else {
		printFactsTable(a, reports)
	}
	if c.Context().Err() != nil {
		return withCode(interruptCode(c.Context()), c.Context().Err())
	}
	return withCode(code, nil)
}

// factsReport is one node in facts output. Token values are redacted.
type factsReport struct {
	Cluster       string         `json:"cluster"`
	Node          string         `json:"node"`
	Host          string         `json:"host"`
	InventoryRole string         `json:"inventoryRole"`
	Primary       bool           `json:"primary,omitempty"`
	Reachable     bool           `json:"reachable"`
	Error         string         `json:"error,omitempty"`
	Facts         *k3s.NodeFacts `json:"facts,omitempty"`
	Tokens        []tokenReport  `json:"tokens,omitempty"`
	// TokenProblem says why the token k3s uses cannot be known, or that
	// a node that joins a cluster defines none.
	TokenProblem string `json:"tokenProblem,omitempty"`
}

type tokenReport struct {
	File      string `json:"file"`
	Line      int    `json:"line"`
	Kind      string `json:"kind"`
	Key       string `json:"key"`
	Class     string `json:"class"` // secure, short, bootstrap, file reference, invalid
	Value     string `json:"value"` // redacted
	CAHash    string `json:"caHash,omitempty"`
	MatchesCA *bool  `json:"matchesCA,omitempty"`
	Ignored   string `json:"ignored,omitempty"`
	Problem   string `json:"problem,omitempty"`
	// Effective is "token" or "agent-token" for the definition k3s uses
	// for that setting, by its precedence.
	Effective string `json:"effective,omitempty"`
}

func newFactsReport(n *orchestrator.Node) factsReport {
	r := factsReport{Cluster: n.Cluster, Node: n.Name, Host: n.Host, InventoryRole: string(n.Role), Primary: n.Primary}
	if n.Err != nil {
		r.Error = n.Err.Error()
		return r
	}
	r.Reachable = true
	f := n.Facts
	r.Facts = &f
	for _, t := range f.Tokens {
		tr := tokenReport{File: t.File, Line: t.Line, Kind: string(t.Kind), Key: t.Key,
			Class: t.TokenClass(), Value: t.Redacted(), Ignored: t.Ignored}
		if t.Err != nil {
			tr.Problem = t.Err.Error()
		}
		switch {
		case sameSource(f.Token, t):
			tr.Effective = "token"
		case sameSource(f.AgentToken, t):
			tr.Effective = "agent-token"
		}
		if t.Secure() {
			tr.CAHash = t.Token.CAHash
			if f.CAHash != "" {
				m := t.Token.CAHash == f.CAHash
				tr.MatchesCA = &m
			}
		}
		r.Tokens = append(r.Tokens, tr)
	}
	if err := errors.Join(f.TokenErr, f.AgentTokenErr); err != nil {
		r.TokenProblem = err.Error()
	}
	return r
}

func hasProblem(ts []tokenReport) bool {
	for _, t := range ts {
		if t.Problem != "" {
			return true
		}
	}
	return false
}

func sameSource(eff *k3s.TokenSource, t k3s.TokenSource) bool {
	return eff != nil && eff.File == t.File && eff.Line == t.Line && eff.Key == t.Key && eff.Kind == t.Kind
}

func printFactsTable(a *app, reports []factsReport) {
	clusters := map[string]bool{}
	unreachable, problems := 0, 0
	for _, r := range reports {
		clusters[r.Cluster] = true
		if !r.Reachable {
			unreachable++
		} else if r.TokenProblem != "" || hasProblem(r.Tokens) {
			problems++
		}
	}
	fmt.Fprintf(a.stdout, "FLEET: %d cluster(s), %d node(s), %d unreachable, %d with token problems\n",
		len(clusters), len(reports), unreachable, problems)
	w := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "CLUSTER\tNODE\tROLE\tVERSION\tINIT\tUNIT\tSTATE\tCA HASH\tTOKENS\tCA EXPIRES\tLEAF EXPIRES")
	for _, r := range reports {
		if !r.Reachable {
			fmt.Fprintf(w, "%s\t%s\t%s\t-\t-\t-\tUNREACHABLE\t-\t-\t-\t-\n", r.Cluster, r.Node, r.InventoryRole)
			continue
		}
		f := r.Facts
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Cluster, r.Node,
			roleCell(r.InventoryRole, f.Role), dash(f.Version), dash(f.Init), f.Unit, dash(f.UnitState),
			shortHash(f.CAHash), tokensCell(r), dateCell(f.CAExpiry), dateCell(f.LeafExpiry))
	}
	w.Flush()
	printTokenSources(a, reports)
	for _, r := range reports {
		if r.Error != "" {
			fmt.Fprintf(a.stdout, "%s/%s: %s\n", r.Cluster, r.Node, r.Error)
		}
		if r.TokenProblem != "" {
			fmt.Fprintf(a.stdout, "%s/%s: token: %s\n", r.Cluster, r.Node, r.TokenProblem)
		}
	}
}

// printTokenSources lists every place each node defines a token, which
// one k3s uses, and what fleetcert cannot account for.
func printTokenSources(a *app, reports []factsReport) {
	have := false
	for _, r := range reports {
		have = have || len(r.Tokens) > 0
	}
	if !have {
		return
	}
	fmt.Fprintln(a.stdout)
	w := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "CLUSTER\tNODE\tSOURCE\tKIND\tKEY\tCLASS\tVALUE\tUSED BY K3S")
	for _, r := range reports {
		for _, t := range r.Tokens {
			used := "yes (" + t.Effective + ")"
			switch {
			case t.Problem != "":
				used = "PROBLEM: " + t.Problem
			case t.Effective == "" && t.Ignored != "":
				used = "no: " + t.Ignored
			case t.Effective == "":
				used = "no (overridden)"
			}
			fmt.Fprintf(w, "%s\t%s\t%s:%d\t%s\t%s\t%s\t%s\t%s\n", r.Cluster, r.Node, t.File, t.Line,
				t.Kind, dash(t.Key), t.Class, t.Value, used)
		}
	}
	w.Flush()
}

// roleCell shows the role, flagging a node that is not what the inventory
// says it is.
func roleCell(inv string, found k3s.Role) string {
	switch {
	case found == "":
		return inv + " (no k3s data)"
	case string(found) != inv:
		return fmt.Sprintf("%s (found %s!)", inv, found)
	}
	return inv
}

// tokensCell summarises token places: how many, of which class, and
// whether the secure ones pin the CA the node holds.
func tokensCell(r factsReport) string {
	ts := r.Tokens
	if r.TokenProblem != "" {
		return "PROBLEM (see below)"
	}
	if len(ts) == 0 {
		return "none"
	}
	count := map[string]int{}
	mismatch := 0
	for _, t := range ts {
		count[t.Class]++
		if t.MatchesCA != nil && !*t.MatchesCA {
			mismatch++
		}
	}
	var parts []string
	for _, class := range []string{"secure", "short", "bootstrap", "file", "invalid"} {
		if count[class] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", count[class], class))
			delete(count, class)
		}
	}
	for class, n := range count {
		parts = append(parts, fmt.Sprintf("%d %s", n, class))
	}
	s := strings.Join(parts, ", ")
	if mismatch > 0 {
		s += fmt.Sprintf(" (%d MISMATCH)", mismatch)
	}
	return s
}

func shortHash(h string) string {
	if len(h) < 12 {
		return dash(h)
	}
	return h[:12]
}

func dateCell(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
