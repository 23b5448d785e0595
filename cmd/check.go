package cmd

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/k3s"
	"github.com/fleetcert/fleetcert/orchestrator"
	"github.com/fleetcert/fleetcert/remote"
)

type checkFlags struct {
	within     duration
	outputFile string
	crossCheck bool
	all        bool
	maxSkew    duration
}

func (a *app) newCheckCmd() *cobra.Command {
	var f checkFlags
	f.within = duration(k3s.DefaultCheckWithin)
	f.maxSkew = duration(orchestrator.DefaultMaxClockSkew)
	c := &cobra.Command{
		Use:   "check",
		Short: "Check every certificate on every selected node: expiry, token/CA match, key hygiene",
		Long: `check reads every certificate k3s uses on every selected node (CA bundles,
server, etcd and agent leaf certificates, the :6443 serving certificate in
dynamic-cert.json) over SSH, in the same single round trip as facts, and
parses them on the controller, so it works on every k3s version. Each
certificate gets k3s's status names: OK, WARNING (expires within --within,
default 120d: k3s's own renewal threshold), EXPIRED, NOT YET VALID.

Per cluster it asks the servers which CA they serve (/cacerts through the
SSH connection; server/token when forwarding is off) and compares every
node's secure join tokens and held CA bundle with it. It also reports root
or intermediate CA private keys left in server/tls and private keys that
group or others can read. It changes nothing.

Exit status: 0 all OK; 1 any certificate not OK, a token/CA mismatch or a
finding; 4 some nodes unreachable and nothing else wrong; 2 bad usage.`,
		Example: `  fleetcert check -i hosts.yaml
  fleetcert check -i hosts.yaml --within 30d -o json
  fleetcert check -i hosts.yaml -o prometheus --output-file /var/lib/node_exporter/textfile/fleetcert.prom`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error { return a.runCheck(c, &f) },
	}
	c.Flags().Var(&f.within, "within", "a certificate expiring within this is a WARNING (Go duration or days, e.g. 30d)")
	c.Flags().BoolVar(&f.crossCheck, "cross-check", false, "also run k3s's (or RKE2's) own certificate check (JSON) where the node has it (k3s v1.32.0, v1.31.5, v1.30.9 and later; RKE2 also v1.29.13) and report where it disagrees; fleetcert's own reading stays the verdict")
	c.Flags().Var(&f.maxSkew, "max-clock-skew", "a node whose clock differs from the controller's by more is a finding (clockSkew)")
	c.Flags().BoolVar(&f.all, "all", false, "table: list every certificate of every cluster, not only what needs attention (also with -v)")
	c.Flags().StringVar(&f.outputFile, "output-file", "", "write the output to this file atomically (temp file in the same directory, then rename) instead of standard output")
	return c
}

func (a *app) runCheck(c *cobra.Command, f *checkFlags) error {
	switch a.g.output {
	case "table", "json", "prometheus":
	default:
		return usageErrorf("-o/--output must be table, json or prometheus for check, not %q", a.g.output)
	}
	if f.maxSkew.value() <= 0 {
		return usageErrorf("--max-clock-skew must be more than 0")
	}
	if f.within.value() <= 0 {
		return usageErrorf("--within must be more than 0")
	}
	if f.outputFile != "" {
		if st, err := os.Stat(filepath.Dir(f.outputFile)); err != nil || !st.IsDir() {
			return usageErrorf("--output-file %s: its directory does not exist", f.outputFile)
		}
	}
	_, clusters, err := a.loadInventory()
	if err != nil {
		return err
	}
	var inv []inventory.Node
	for _, cl := range clusters {
		inv = append(inv, cl.Nodes...)
	}
	// Node by node (connect, read, judge, close): at most --concurrency
	// connections open, and only the verdicts kept. Connections that the
	// open-file limit has no room for would fail as unreachable nodes, so
	// the concurrency is lowered to fit, and said so.
	conc := a.g.concurrency
	if limit, ok := openFileLimit(); ok {
		fit, need := fitConcurrency(conc, limit)
		if fit < conc {
			a.log.Error(fmt.Sprintf("--concurrency %d needs about %d open files, but this process may open only %d (ulimit -n): checking %d nodes at a time instead; raise the limit (e.g. ulimit -n %d) to check faster",
				conc, need, limit, fit, need), "concurrency", fit)
			conc = fit
		}
	}
	now := time.Now()
	checked := orchestrator.CheckFleet(c.Context(), inv, a.dialer(), orchestrator.CheckOptions{
		Now: now, Within: f.within.value(), Limit: conc,
		ProbeTimeout: min(a.g.timeout.value(), 30*time.Second), CrossCheck: f.crossCheck, MaxClockSkew: f.maxSkew.value(),
	})
	if c.Context().Err() != nil {
		// Nodes cut off by the interrupt would read as unreachable: better
		// no report (and the last --output-file left as it was) than a
		// wrong one.
		return withCode(interruptCode(c.Context()), c.Context().Err())
	}
	report := newCheckReport(checked, now, f.within.value())
	for i, cc := range report.Clusters {
		if e := cc.Expired; e != nil {
			e.Fix = remote.Quotef("fleetcert rotate -i %s --cluster %s", a.g.inventory, cc.Name)
			report.Clusters[i].Expired = e
		}
		for _, u := range cc.Unreachable {
			a.log.Warn("node not reached", "cluster", cc.Name, "node", u.Node, "err", u.Error)
		}
	}

	// Standard output gets the report as it is written; --output-file
	// gets it whole, atomically.
	var buf bytes.Buffer
	out := bufio.NewWriterSize(a.stdout, 64<<10)
	w := io.Writer(out)
	if f.outputFile != "" {
		w = &buf
	}
	switch a.g.output {
	case "json":
		if err := writeCheckJSON(w, report); err != nil {
			return err
		}
	case "prometheus":
		writeCheckPrometheus(w, report)
	default:
		writeCheckTable(w, report, f.all || a.g.verbose)
	}
	if f.outputFile != "" {
		if err := writeFileAtomic(f.outputFile, buf.Bytes(), 0o644); err != nil {
			return withCode(ExitFailed, fmt.Errorf("--output-file: %w", err))
		}
	} else if err := out.Flush(); err != nil {
		return err
	}
	return withCode(report.Summary.ExitCode, nil)
}

// writeCheckJSON writes the report as json.Encoder with a two-space
// indent does, byte for byte, but a cluster at a time: the encoder would
// hold the whole document twice (marshalled, then indented) before
// writing it, some 200 MiB at 10,000 nodes.
func writeCheckJSON(w io.Writer, r checkReport) error {
	clusters := r.Clusters
	r.Clusters = []clusterCheckReport{}
	head, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if len(clusters) == 0 {
		_, err := w.Write(append(head, '\n'))
		return err
	}
	// head ends with `"clusters": []` and the closing brace.
	open, ok := bytes.CutSuffix(head, []byte("[]\n}"))
	if !ok {
		return fmt.Errorf("check report: unexpected JSON layout")
	}
	if _, err := w.Write(append(open, "[\n"...)); err != nil {
		return err
	}
	for i, cr := range clusters {
		b, err := json.MarshalIndent(cr, "    ", "  ")
		if err != nil {
			return err
		}
		b = append(append([]byte("    "), b...), ",\n"...)
		if i == len(clusters)-1 {
			b = append(b[:len(b)-2], '\n')
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	_, err = io.WriteString(w, "  ]\n}\n")
	return err
}

// checkReport is check's output: stable lowerCamelCase JSON, and the
// source of the table and the Prometheus exposition.
type checkReport struct {
	SchemaVersion int                  `json:"schemaVersion"`
	CheckedAt     time.Time            `json:"checkedAt"`
	WithinSeconds int64                `json:"withinSeconds"`
	Summary       checkSummary         `json:"summary"`
	Clusters      []clusterCheckReport `json:"clusters"`
}

type checkSummary struct {
	Clusters     int `json:"clusters"`
	Nodes        int `json:"nodes"`
	NodesChecked int `json:"nodesChecked"`
	Unreachable  int `json:"unreachable"`
	statusCounts
	Findings int `json:"findings"`
	ExitCode int `json:"exitCode"`
}

type statusCounts struct {
	Certificates int `json:"certificates"`
	OK           int `json:"ok"`
	Warning      int `json:"warning"`
	Expired      int `json:"expired"`
	NotYetValid  int `json:"notYetValid"`
}

func (s *statusCounts) add(st k3s.CertStatus, n int) {
	s.Certificates += n
	switch st {
	case k3s.StatusOK:
		s.OK += n
	case k3s.StatusWarning:
		s.Warning += n
	case k3s.StatusExpired:
		s.Expired += n
	case k3s.StatusNotYetValid:
		s.NotYetValid += n
	}
}

type clusterCheckReport struct {
	Name         string     `json:"name"`
	NodesTotal   int        `json:"nodesTotal"`
	NodesChecked int        `json:"nodesChecked"`
	Earliest     *expiryRef `json:"earliestExpiry,omitempty"`
	CAExpiry     *expiryRef `json:"caExpiry,omitempty"`
	// Expired is set when servers' leaf certificates have expired: the
	// cluster's API is down until they are renewed.
	Expired *expiredReport `json:"expired,omitempty"`
	// CAHash is hashCA of what the servers serve; TokenCAMatch whether
	// every node's secure tokens pin it (null: nothing to judge).
	CAHash       string                  `json:"caHash,omitempty"`
	Served       []orchestrator.ServedBy `json:"served"`
	TokenCAMatch *bool                   `json:"tokenCAMatch"`
	Counts       statusCounts            `json:"counts"`
	Findings     []k3s.Finding           `json:"findings"`
	Unreachable  []unreachableReport     `json:"unreachable"`
	Nodes        []nodeCheckReport       `json:"nodes"`
}

type expiredReport struct {
	Servers []string `json:"servers"`
	Fix     string   `json:"fix"` // the command that renews them
}

type expiryRef struct {
	Node            string    `json:"node"`
	File            string    `json:"file"`
	Subject         string    `json:"subject"`
	NotAfter        time.Time `json:"notAfter"`
	ResidualSeconds int64     `json:"residualSeconds"`
	Status          string    `json:"status"`
}

type unreachableReport struct {
	Node  string `json:"node"`
	Host  string `json:"host"`
	Error string `json:"error"`
}

type nodeCheckReport struct {
	Node         string                         `json:"node"`
	Host         string                         `json:"host"`
	Role         string                         `json:"role"`
	DataDir      string                         `json:"dataDir"`
	Version      string                         `json:"version,omitempty"`
	TokenCAMatch *bool                          `json:"tokenCAMatch"`
	CrossCheck   *orchestrator.CrossCheckResult `json:"crossCheck,omitempty"`
	Certificates []certReport                   `json:"certificates"`
}

type certReport struct {
	File            string    `json:"file"`
	Index           int       `json:"index"`
	Subject         string    `json:"subject"`
	Issuer          string    `json:"issuer"`
	Serial          string    `json:"serial"`
	NotBefore       time.Time `json:"notBefore"`
	NotAfter        time.Time `json:"notAfter"`
	ResidualSeconds int64     `json:"residualSeconds"`
	Status          string    `json:"status"`
	CA              bool      `json:"ca"`
	Bundle          bool      `json:"bundle"`
}

func newCertReport(c k3s.CheckedCert) certReport {
	r := certReport{File: c.File, Index: c.Index, Subject: c.Subject, Issuer: c.Issuer,
		NotBefore: c.NotBefore.UTC(), NotAfter: c.NotAfter.UTC(), ResidualSeconds: int64(c.Residual / time.Second),
		Status: string(c.Status), CA: c.CA, Bundle: c.Bundle, Serial: c.Serial}
	return r
}

func newExpiryRef(e orchestrator.EarliestCert) *expiryRef {
	return &expiryRef{Node: e.Node, File: e.Cert.File, Subject: e.Cert.Subject, NotAfter: e.Cert.NotAfter.UTC(),
		ResidualSeconds: int64(e.Cert.Residual / time.Second), Status: string(e.Cert.Status)}
}

// newCheckReport turns the orchestrator's verdicts into the report, and
// decides the exit code: 1 for any problem, else 4 for unreachable nodes.
func newCheckReport(clusters []*orchestrator.ClusterCheck, now time.Time, within time.Duration) checkReport {
	r := checkReport{SchemaVersion: orchestrator.SchemaVersion, CheckedAt: now.UTC().Truncate(time.Second), WithinSeconds: int64(within / time.Second),
		Clusters: []clusterCheckReport{}}
	problems := false
	for _, cc := range clusters {
		cr := clusterCheckReport{Name: cc.Name, NodesTotal: len(cc.Nodes) + len(cc.Unreachable), NodesChecked: len(cc.Nodes),
			CAHash: cc.CAHash, Served: cc.Served, TokenCAMatch: cc.TokenCAMatch(),
			Findings: cc.Findings, Unreachable: []unreachableReport{}, Nodes: []nodeCheckReport{}}
		if cr.Served == nil {
			cr.Served = []orchestrator.ServedBy{}
		}
		if cr.Findings == nil {
			cr.Findings = []k3s.Finding{}
		}
		if servers := cc.ExpiredServers(); len(servers) > 0 {
			cr.Expired = &expiredReport{Servers: servers, Fix: "fleetcert rotate --cluster " + cc.Name}
		}
		if first, ca, ok, okCA := cc.Earliest(); ok {
			cr.Earliest = newExpiryRef(first)
			if okCA {
				cr.CAExpiry = newExpiryRef(ca)
			}
		}
		for st, n := range cc.Counts() {
			cr.Counts.add(st, n)
			r.Summary.add(st, n)
		}
		for _, u := range cc.Unreachable {
			cr.Unreachable = append(cr.Unreachable, unreachableReport{Node: u.Name, Host: u.Host, Error: u.Err.Error()})
		}
		for _, cn := range cc.Nodes {
			nr := nodeCheckReport{Node: cn.Name, Host: cn.Host, Role: string(cn.Role), DataDir: cn.Facts.DataDir,
				Version: cn.Facts.Version, TokenCAMatch: cn.TokenCAMatch, CrossCheck: cn.CrossCheck, Certificates: []certReport{}}
			for _, c := range cn.Certs {
				nr.Certificates = append(nr.Certificates, newCertReport(c))
			}
			cr.Nodes = append(cr.Nodes, nr)
		}
		problems = problems || cc.Problems()
		r.Summary.Clusters++
		r.Summary.Nodes += cr.NodesTotal
		r.Summary.NodesChecked += cr.NodesChecked
		r.Summary.Unreachable += len(cr.Unreachable)
		r.Summary.Findings += len(cr.Findings)
		r.Clusters = append(r.Clusters, cr)
	}
	switch {
	case problems:
		r.Summary.ExitCode = ExitFailed
	case r.Summary.Unreachable > 0:
		r.Summary.ExitCode = ExitUnreachable
	}
	return r
}

// writeCheckTable prints the fleet summary first, then what needs
// attention: per cluster with a problem a summary line, its certificates
// that are not OK (soonest expiry first), findings and unreachable nodes.
// A healthy fleet of any size fits on one screen. With all, every cluster
// and every certificate is listed. Clusters come most urgent first.
func writeCheckTable(w io.Writer, r checkReport, all bool) {
	writeFleetSummary(w, r)
	clusters := append([]clusterCheckReport(nil), r.Clusters...)
	sort.SliceStable(clusters, func(i, j int) bool {
		a, b := clusters[i].Earliest, clusters[j].Earliest
		return a != nil && (b == nil || a.NotAfter.Before(b.NotAfter))
	})
	for _, cr := range clusters {
		if !all && !needsAttention(cr) {
			continue
		}
		fmt.Fprintln(w)
		fmt.Fprintln(w, clusterSummaryLine(cr))
		writeClusterCerts(w, cr, all)
		writeClusterNotes(w, cr)
	}
}

// writeFleetSummary is the fleet in a few lines: counts, findings by
// kind, and the soonest expiries.
func writeFleetSummary(w io.Writer, r checkReport) {
	s := r.Summary
	fmt.Fprintf(w, "FLEET: %d cluster(s), %d/%d node(s) checked, %d unreachable; %d certificate(s): %d OK, %d WARNING, %d EXPIRED, %d NOT YET VALID; %d finding(s)\n",
		s.Clusters, s.NodesChecked, s.Nodes, s.Unreachable, s.Certificates, s.OK, s.Warning, s.Expired, s.NotYetValid, s.Findings)
	kinds := map[string]int{}
	for _, cr := range r.Clusters {
		for _, f := range cr.Findings {
			kinds[f.Kind]++
		}
	}
	if len(kinds) > 0 {
		names := make([]string, 0, len(kinds))
		for k := range kinds {
			names = append(names, k)
		}
		sort.Strings(names)
		parts := make([]string, len(names))
		for i, k := range names {
			parts[i] = fmt.Sprintf("%s %d", k, kinds[k])
		}
		fmt.Fprintf(w, "FINDINGS: %s\n", strings.Join(parts, ", "))
	}
	var soonest []clusterCheckReport
	for _, cr := range r.Clusters {
		if cr.Earliest != nil {
			soonest = append(soonest, cr)
		}
	}
	sort.SliceStable(soonest, func(i, j int) bool { return soonest[i].Earliest.NotAfter.Before(soonest[j].Earliest.NotAfter) })
	for _, cr := range soonest[:min(3, len(soonest))] {
		e := cr.Earliest
		fmt.Fprintf(w, "SOONEST: %s %s/%s %s (%s, %s)\n", e.NotAfter.Format("2006-01-02"), cr.Name, e.Node, path.Base(e.File),
			residualCell(time.Duration(e.ResidualSeconds)*time.Second), e.Status)
	}
}

// needsAttention: a cluster with a certificate not OK, a finding, an
// unreachable node, tokens that do not match or a cross-check to show.
func needsAttention(cr clusterCheckReport) bool {
	c := cr.Counts
	if cr.Expired != nil {
		return true
	}
	if c.Warning+c.Expired+c.NotYetValid > 0 || len(cr.Findings) > 0 || len(cr.Unreachable) > 0 ||
		(cr.TokenCAMatch != nil && !*cr.TokenCAMatch) {
		return true
	}
	for _, nr := range cr.Nodes {
		if nr.CrossCheck != nil {
			return true
		}
	}
	return false
}

// writeClusterCerts lists the cluster's certificates, soonest expiry
// first: those not OK, or with all every one.
func writeClusterCerts(w io.Writer, cr clusterCheckReport, all bool) {
	type row struct {
		node string
		c    certReport
		dir  string
	}
	var rows []row
	for _, nr := range cr.Nodes {
		for _, c := range nr.Certificates {
			if all || c.Status != string(k3s.StatusOK) {
				rows = append(rows, row{nr.Node, c, nr.DataDir})
			}
		}
	}
	if len(rows) == 0 {
		return
	}
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].c.NotAfter.Before(rows[j].c.NotAfter) })
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  NODE\tFILE\tSUBJECT\tISSUER\tNOT AFTER\tRESIDUAL\tSTATUS")
	for _, rw := range rows {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\n", rw.node, fileCell(rw.dir, rw.c.File, rw.c.Index),
			dash(rw.c.Subject), dash(rw.c.Issuer), rw.c.NotAfter.Format("2006-01-02 15:04"),
			residualCell(time.Duration(rw.c.ResidualSeconds)*time.Second), rw.c.Status)
	}
	tw.Flush()
}

// writeClusterNotes prints the cluster's findings, unreachable nodes and
// cross-check results.
func writeClusterNotes(w io.Writer, cr clusterCheckReport) {
	if e := cr.Expired; e != nil {
		fmt.Fprintf(w, "  EXPIRED: the certificates of server(s) %s have expired: the cluster's API is down until they are renewed; run: %s\n",
			strings.Join(e.Servers, ", "), e.Fix)
	}
	for _, f := range cr.Findings {
		where := f.Node
		if f.File != "" {
			where += " " + f.File
		}
		fmt.Fprintf(w, "  FINDING %s: %s: %s\n", f.Kind, strings.TrimSpace(where), f.Message)
	}
	for _, u := range cr.Unreachable {
		fmt.Fprintf(w, "  UNREACHABLE %s (%s): %s\n", u.Node, u.Host, u.Error)
	}
	for _, nr := range cr.Nodes {
		switch x := nr.CrossCheck; {
		case x == nil:
		case x.Error != "":
			fmt.Fprintf(w, "  CROSS-CHECK %s: k3s certificate check failed: %s\n", nr.Node, x.Error)
		case !x.Ran:
			fmt.Fprintf(w, "  CROSS-CHECK %s: skipped: %s\n", nr.Node, x.Skipped)
		case len(x.Disagreements) == 0:
			fmt.Fprintf(w, "  CROSS-CHECK %s: k3s agrees on %d certificate(s)\n", nr.Node, x.Compared)
		default:
			for _, d := range x.Disagreements {
				fmt.Fprintf(w, "  CROSS-CHECK %s: %s\n", nr.Node, d)
			}
		}
	}
}

func clusterSummaryLine(cr clusterCheckReport) string {
	var b strings.Builder
	fmt.Fprintf(&b, "CLUSTER %s: %d/%d nodes checked", cr.Name, cr.NodesChecked, cr.NodesTotal)
	if n := len(cr.Unreachable); n > 0 {
		fmt.Fprintf(&b, " (%d unreachable)", n)
	}
	if e := cr.Earliest; e != nil {
		file := e.File
		for _, nr := range cr.Nodes {
			if nr.Node == e.Node {
				file = fileCell(nr.DataDir, file, 0)
			}
		}
		fmt.Fprintf(&b, ", earliest expiry %s (%s, %s %s)", e.NotAfter.Format("2006-01-02"),
			residualCell(time.Duration(e.ResidualSeconds)*time.Second), e.Node, file)
	} else {
		b.WriteString(", no certificates")
	}
	if e := cr.CAExpiry; e != nil {
		fmt.Fprintf(&b, ", CA expiry %s (%s)", e.NotAfter.Format("2006-01-02"), residualCell(time.Duration(e.ResidualSeconds)*time.Second))
	}
	switch {
	case cr.TokenCAMatch == nil:
		b.WriteString(", token/CA match: unknown")
	case *cr.TokenCAMatch:
		b.WriteString(", token/CA match: yes")
	default:
		b.WriteString(", token/CA match: NO")
	}
	fmt.Fprintf(&b, ", findings: %d", len(cr.Findings))
	c := cr.Counts
	for _, s := range []struct {
		n    int
		name k3s.CertStatus
	}{{c.Expired, k3s.StatusExpired}, {c.NotYetValid, k3s.StatusNotYetValid}, {c.Warning, k3s.StatusWarning}} {
		if s.n > 0 {
			fmt.Fprintf(&b, ", %d %s", s.n, s.name)
		}
	}
	return b.String()
}

// fileCell shows a file relative to the node's data dir, and which cert of
// a bundle it is.
func fileCell(dataDir, file string, index int) string {
	if rel, ok := strings.CutPrefix(file, strings.TrimSuffix(dataDir, "/")+"/"); ok && dataDir != "" {
		file = rel
	}
	if index > 0 {
		file += fmt.Sprintf("[%d]", index)
	}
	return file
}

// residualCell shows time left in days (hours or minutes when close);
// negative once expired.
func residualCell(d time.Duration) string {
	sign := ""
	if d < 0 {
		sign, d = "-", -d
	}
	switch {
	case d >= 48*time.Hour:
		return fmt.Sprintf("%s%dd", sign, int(d/(24*time.Hour)))
	case d >= time.Hour:
		return fmt.Sprintf("%s%dh", sign, int(d/time.Hour))
	}
	return fmt.Sprintf("%s%dm", sign, int(d/time.Minute))
}

// writeCheckPrometheus writes the Prometheus text exposition for
// node_exporter's textfile collector, with x509-certificate-exporter's
// metric and label names for certificates, plus fleetcert's own.
func writeCheckPrometheus(w io.Writer, r checkReport) {
	type sample struct {
		labels string
		value  float64
	}
	families := []struct {
		name, help string
		samples    []sample
	}{
		{name: "x509_cert_not_after", help: "Certificate expiry (NotAfter), in seconds since the Unix epoch."},
		{name: "x509_cert_not_before", help: "Certificate start of validity (NotBefore), in seconds since the Unix epoch."},
		{name: "x509_cert_expired", help: "1 when the certificate has expired at the time of the check, 0 otherwise."},
		{name: "fleetcert_check_success", help: "1 when fleetcert reached and read the node, 0 when it could not."},
		{name: "fleetcert_token_ca_match", help: "1 when every secure join token on the node pins the CA its cluster serves, 0 when one does not."},
		{name: "fleetcert_check_findings", help: "Security and consistency findings on the node (CA keys left, readable keys, token/CA mismatch, unreadable files)."},
		{name: "fleetcert_check_timestamp_seconds", help: "When fleetcert check ran, in seconds since the Unix epoch."},
	}
	add := func(i int, value float64, kv ...string) {
		families[i].samples = append(families[i].samples, sample{promLabels(kv...), value})
	}
	for _, cr := range r.Clusters {
		findings := map[string]int{}
		for _, f := range cr.Findings {
			findings[f.Node]++
		}
		for _, nr := range cr.Nodes {
			for _, c := range nr.Certificates {
				kv := []string{"cluster", cr.Name, "node", nr.Node, "filename", filepath.Base(c.File), "filepath", c.File,
					"serial_number", c.Serial, "subject_CN", c.Subject, "issuer_CN", c.Issuer}
				add(0, float64(c.NotAfter.Unix()), kv...)
				add(1, float64(c.NotBefore.Unix()), kv...)
				add(2, boolValue(c.Status == string(k3s.StatusExpired)), kv...)
			}
			add(3, 1, "cluster", cr.Name, "node", nr.Node)
			if nr.TokenCAMatch != nil {
				add(4, boolValue(*nr.TokenCAMatch), "cluster", cr.Name, "node", nr.Node)
			}
			add(5, float64(findings[nr.Node]), "cluster", cr.Name, "node", nr.Node)
		}
		for _, u := range cr.Unreachable {
			add(3, 0, "cluster", cr.Name, "node", u.Node)
		}
	}
	add(6, float64(r.CheckedAt.Unix()))
	for _, f := range families {
		if len(f.samples) == 0 {
			continue
		}
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s gauge\n", f.name, f.help, f.name)
		for _, s := range f.samples {
			fmt.Fprintf(w, "%s%s %s\n", f.name, s.labels, strconv.FormatFloat(s.value, 'f', -1, 64))
		}
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// promLabels formats label pairs, values escaped as the text format wants.
func promLabels(kv ...string) string {
	if len(kv) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteByte('{')
	for i := 0; i+1 < len(kv); i += 2 {
		if i > 0 {
			b.WriteByte(',')
		}
		v := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(kv[i+1])
		fmt.Fprintf(&b, "%s=\"%s\"", kv[i], v)
	}
	b.WriteByte('}')
	return b.String()
}
