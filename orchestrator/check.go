package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
	"unique"

	"golang.org/x/sync/errgroup"

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/k3s"
	"github.com/fleetcert/fleetcert/pki"
	"github.com/fleetcert/fleetcert/remote"
)

// CheckOptions set what `check` judges against.
type CheckOptions struct {
	Now    time.Time     // the controller's clock; zero: time.Now()
	Within time.Duration // expiring within it is a WARNING; zero: k3s's 120 days
	Limit  int           // servers probed at once
	// ProbeTimeout bounds each server's /cacerts probe; zero: 15s.
	ProbeTimeout time.Duration
	// CrossCheck also runs `k3s certificate check -o json` on every node
	// whose version has it (one more round trip each) and compares.
	CrossCheck bool
	// MaxClockSkew: a node whose clock is off by more is a finding; zero:
	// DefaultMaxClockSkew.
	MaxClockSkew time.Duration
}

// DefaultMaxClockSkew is how far a node's clock may be off before check
// reports it.
const DefaultMaxClockSkew = 30 * time.Second

// clockFinding reports a node whose clock is off by more than max.
func clockFinding(f k3s.NodeFacts, max time.Duration) []k3s.Finding {
	if f.ClockSkew.Abs() <= max {
		return nil
	}
	return []k3s.Finding{{Kind: k3s.FindingClockSkew,
		Message: fmt.Sprintf("the node's clock is %s the controller's (more than %s): fix its time sync (NTP)", skewWords(f.ClockSkew), max)}}
}

// skewWords says "2h0m0s behind" or "10m0s ahead of".
func skewWords(d time.Duration) string {
	if d < 0 {
		return (-d).String() + " behind"
	}
	return d.String() + " ahead of"
}

// CrossCheckResult is how k3s's own `certificate check` compares with
// fleetcert's reading of a node. It never decides the verdict: fleetcert's
// parse is the source, this only shows where k3s would disagree.
type CrossCheckResult struct {
	Ran           bool     `json:"ran"`
	Skipped       string   `json:"skipped,omitempty"` // why it did not run
	Error         string   `json:"error,omitempty"`
	Compared      int      `json:"compared"`
	Disagreements []string `json:"disagreements"`
}

// CheckedNode is one node a check read: its certificates, classified, and
// whether its secure join tokens pin the CA its cluster serves.
type CheckedNode struct {
	*Node
	Certs []k3s.CheckedCert
	// TokenCAMatch is nil when the node has no secure token or the
	// cluster's CA could not be told.
	TokenCAMatch *bool
	Findings     []k3s.Finding
	CrossCheck   *CrossCheckResult // with CheckOptions.CrossCheck
}

// ServedBy is what one server serves, or the best proof of it.
type ServedBy struct {
	Node string `json:"node"`
	Hash string `json:"hash,omitempty"`
	// Via is where the hash came from: /cacerts (the running process),
	// server/token (rewritten at every start from the CA it loaded) or
	// server-ca.crt (the file, when neither answered).
	Via   string `json:"via,omitempty"`
	Error string `json:"error,omitempty"` // why /cacerts did not answer
}

// ClusterCheck is a check's result for one cluster.
type ClusterCheck struct {
	Name        string
	Nodes       []*CheckedNode // reachable and read, inventory order
	Unreachable []*Node
	Served      []ServedBy // one per reachable server, primary first
	// CAHash is what the cluster serves (the primary's, or the first
	// server that answered); empty when no server could tell.
	CAHash   string
	Findings []k3s.Finding // the nodes' findings and the cluster's own
}

// withDefaults fills the zero fields with what the field comments say.
func (o CheckOptions) withDefaults() CheckOptions {
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	if o.MaxClockSkew == 0 {
		o.MaxClockSkew = DefaultMaxClockSkew
	}
	if o.Within == 0 {
		o.Within = k3s.DefaultCheckWithin
	}
	if o.Limit < 1 {
		o.Limit = 16
	}
	if o.ProbeTimeout <= 0 {
		o.ProbeTimeout = 15 * time.Second
	}
	return o
}

// Check judges the connected nodes (from Connect): every certificate of
// every reachable node classified from its facts, security findings from
// its snapshot, and per cluster the CA its servers serve (/cacerts through
// the SSH connection: no extra session) against every node's secure join
// tokens and held CA bundle. Unreachable nodes are listed, never fatal.
// CheckFleet does the same from the inventory, connecting as it goes.
func Check(ctx context.Context, nodes []*Node, opts CheckOptions) []*ClusterCheck {
	opts = opts.withDefaults()
	checked := make([]*CheckedNode, len(nodes))
	served := make([]ServedBy, len(nodes))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(opts.Limit)
	for i, n := range nodes {
		if n.Err != nil || n.Conn == nil {
			continue
		}
		g.Go(func() error {
			probe := startProbe(gctx, n, opts)
			checked[i], served[i] = checkNode(gctx, n, opts, probe)
			return nil
		})
	}
	_ = g.Wait()
	return judge(nodes, checked, served)
}

// CheckFleet is Check from the inventory: it connects to every node, at
// most opts.Limit at once, and checks each as soon as its facts are in.
// Each node is one pipeline (dial, facts with the /cacerts probe of a
// server alongside them on the same connection, classification), so no
// node waits for the slowest of the fleet between steps; and once judged,
// its connection is closed and its snapshot dropped: open connections and
// the memory held for raw files are bounded by the concurrency, not by the
// fleet's size. What is kept per node is its verdict and its facts (the
// tokens the cluster's CA is judged against once all its servers are in).
func CheckFleet(ctx context.Context, inv []inventory.Node, dial Dialer, opts CheckOptions) []*ClusterCheck {
	opts = opts.withDefaults()
	nodes := make([]*Node, len(inv))
	checked := make([]*CheckedNode, len(inv))
	served := make([]ServedBy, len(inv))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(opts.Limit)
	for i, in := range inv {
		n := &Node{Node: in, Layout: layoutOf(in)}
		nodes[i] = n
		g.Go(func() error {
			h, err := dial(gctx, n.Node)
			if err != nil {
				n.Err = fmt.Errorf("connect: %w", err)
				return nil
			}
			n.Conn = h
			probe := startProbe(gctx, n, opts)
			if n.Err = n.refresh(gctx); n.Err == nil {
				checked[i], served[i] = checkNode(gctx, n, opts, probe)
				n.Facts.Certs = nil // classified: the verdict holds them
			} else {
				probe.wait()
			}
			n.release()
			return nil
		})
	}
	_ = g.Wait()
	return judge(nodes, checked, served)
}

// probe is a server's /cacerts fetch, running while its facts are read.
type probe struct {
	done   chan struct{}
	cancel context.CancelFunc
	ca     []byte
	err    error
}

// startProbe starts fetching /cacerts from a server (nil for an agent):
// a direct-tcpip channel beside the facts session, so the probe costs the
// node no process and the check no extra round trip in sequence.
func startProbe(ctx context.Context, n *Node, opts CheckOptions) *probe {
	if n.Role != inventory.Server {
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, opts.ProbeTimeout)
	p := &probe{done: make(chan struct{}), cancel: cancel}
	go func() {
		p.ca, p.err = fetchCACerts(pctx, n)
		close(p.done)
	}()
	return p
}

func (p *probe) wait() {
	if p != nil {
		<-p.done
		p.cancel()
	}
}

// checkNode judges one node whose facts are in: its certificates and
// findings, the cross-check when asked, and for a server what it serves.
func checkNode(ctx context.Context, n *Node, opts CheckOptions, p *probe) (*CheckedNode, ServedBy) {
	cn := &CheckedNode{Node: n}
	nc := k3s.CheckNode(n.Layout, n.Snapshot, n.Facts, opts.Now, opts.Within)
	// The verdicts are what a check keeps of every node until the end:
	// no spare capacity, and one copy of each file name, subject and
	// issuer, which the nodes of a fleet (and of a cluster) share, rather
	// than one per node.
	cn.Certs, cn.Findings = slices.Clone(nc.Certs), nc.Findings
	for i := range cn.Certs {
		c := &cn.Certs[i]
		c.File, c.Subject, c.Issuer = unique.Make(c.File).Value(), unique.Make(c.Subject).Value(), unique.Make(c.Issuer).Value()
	}
	cn.Findings = append(cn.Findings, roleFindings(n)...)
	cn.Findings = append(cn.Findings, clockFinding(n.Facts, opts.MaxClockSkew)...)
	if opts.CrossCheck {
		cctx, cancel := context.WithTimeout(ctx, opts.ProbeTimeout)
		cn.CrossCheck = crossCheck(cctx, cn, opts.Now)
		cancel()
	}
	var s ServedBy
	if p != nil {
		p.wait()
		s = servedBy(n, p.ca, p.err)
	}
	return cn, s
}

// judge groups the nodes by cluster (inventory order) and judges each
// cluster: what its servers serve, and every node's tokens against it.
// checked and served are by node index; a node not checked is unreachable.
func judge(nodes []*Node, checked []*CheckedNode, served []ServedBy) []*ClusterCheck {
	var clusters []*ClusterCheck
	byName := map[string]*ClusterCheck{}
	servedBy := map[*Node]ServedBy{}
	for i, n := range nodes {
		cc := byName[n.Cluster]
		if cc == nil {
			cc = &ClusterCheck{Name: n.Cluster}
			byName[n.Cluster] = cc
			clusters = append(clusters, cc)
		}
		if checked[i] == nil {
			cc.Unreachable = append(cc.Unreachable, n)
			continue
		}
		cc.Nodes = append(cc.Nodes, checked[i])
		if n.Role == inventory.Server {
			servedBy[n] = served[i]
		}
	}
	for _, cc := range clusters {
		cc.judgeServed(servedBy)
		for _, cn := range cc.Nodes {
			cn.judgeTokens(cc.CAHash)
			for _, f := range cn.Findings {
				f.Node = cn.Name
				cc.Findings = append(cc.Findings, f)
			}
		}
	}
	return clusters
}

// crossCheck runs k3s's own certificate check where the node's k3s has it
// with JSON output, and compares.
func crossCheck(ctx context.Context, cn *CheckedNode, now time.Time) *CrossCheckResult {
	r := &CrossCheckResult{Disagreements: []string{}}
	v, err := k3s.ParseVersion(cn.Facts.Version)
	switch {
	case cn.Facts.Version == "" || err != nil:
		r.Skipped = "k3s version unknown"
		return r
	case !cn.Layout.CheckHasOutputFlag(v):
		r.Skipped = fmt.Sprintf("%s %s has no `certificate check --output json`", cn.Layout.ProductName(), v)
		return r
	}
	out, err := remote.Output(ctx, cn.Conn, cn.Layout.CertificateCheckCmd())
	if err != nil {
		r.Error = err.Error()
		return r
	}
	entries, err := k3s.ParseCertificateCheck(out)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	r.Ran = true
	var dis []string
	r.Compared, dis = k3s.CrossCheck(cn.Certs, entries, now, v)
	r.Disagreements = append(r.Disagreements, dis...)
	return r
}

// servedBy says what a server serves from its /cacerts answer (ca, or
// why there is none). When forwarding is refused or the server does not
// answer, the hash in server/token from the facts stands in (what the
// running server pinned at its start: servedHash's own fallback, here
// without another round trip), then the hash of server-ca.crt.
func servedBy(n *Node, ca []byte, err error) ServedBy {
	s := ServedBy{Node: n.Name}
	if err == nil {
		s.Hash, s.Via = pki.HashCA(ca), "/cacerts"
		return s
	}
	if !errors.Is(err, errNoTunnel) {
		s.Error = err.Error()
	}
	switch {
	case n.Facts.ServerTokenHash != "":
		s.Hash, s.Via = n.Facts.ServerTokenHash, "server/token"
	case n.Facts.CAHash != "":
		s.Hash, s.Via = n.Facts.CAHash, "server-ca.crt"
	}
	return s
}

// judgeServed picks the cluster's CA from what its servers serve (primary
// first) and flags servers that serve another.
func (cc *ClusterCheck) judgeServed(served map[*Node]ServedBy) {
	var ordered []*Node
	for _, cn := range cc.Nodes {
		if cn.Role == inventory.Server && cn.Primary {
			ordered = append(ordered, cn.Node)
		}
	}
	for _, cn := range cc.Nodes {
		if cn.Role == inventory.Server && !cn.Primary {
			ordered = append(ordered, cn.Node)
		}
	}
	for _, n := range ordered {
		s := served[n]
		cc.Served = append(cc.Served, s)
		if cc.CAHash == "" && s.Hash != "" && s.Via == "/cacerts" {
			cc.CAHash = s.Hash
		}
	}
	if cc.CAHash == "" { // nobody answered /cacerts: the best proof there is
		for _, s := range cc.Served {
			if s.Hash != "" {
				cc.CAHash = s.Hash
				break
			}
		}
	}
	for _, s := range cc.Served {
		if s.Hash != "" && s.Hash != cc.CAHash {
			cc.Findings = append(cc.Findings, k3s.Finding{Node: s.Node, Kind: k3s.FindingServersDisagree,
				Message: fmt.Sprintf("serves CA %s (%s), other servers of the cluster serve %s", short(s.Hash), s.Via, short(cc.CAHash))})
		}
	}
}

// judgeTokens compares the node's secure tokens, its server/token and its
// held CA bundle with the CA the cluster serves. When the cluster's CA is
// unknown (no server reachable), tokens are judged against the node's own
// CA bundle, as facts does.
func (cn *CheckedNode) judgeTokens(clusterHash string) {
	f := cn.Facts
	want, against := clusterHash, "the CA the cluster's servers serve"
	if want == "" {
		want, against = f.CAHash, "the CA bundle the node holds"
	} else if f.CAHash != "" && f.CAHash != clusterHash {
		held := cn.Layout
		if f.Role != "" {
			held.Role = f.Role
		}
		cn.Findings = append(cn.Findings, k3s.Finding{Kind: k3s.FindingHeldCAMismatch, File: held.HeldCA(),
			Message: fmt.Sprintf("holds CA %s, but the cluster serves %s", short(f.CAHash), short(clusterHash))})
	}
	if want == "" {
		return
	}
	match, judged := true, false
	for _, t := range f.Tokens {
		if !t.Secure() {
			continue
		}
		judged = true
		if t.Token.CAHash != want {
			match = false
			msg := fmt.Sprintf("%s (line %d) pins CA %s, not %s (%s)", t.Key, t.Line, short(t.Token.CAHash), short(want), against)
			if t.Ignored != "" {
				msg += "; k3s ignores this definition (" + t.Ignored + ") but a rotation rewrites it"
			}
			cn.Findings = append(cn.Findings, k3s.Finding{Kind: k3s.FindingTokenMismatch, File: t.File, Message: msg})
		}
	}
	for _, t := range []*k3s.TokenSource{f.Token, f.AgentToken} {
		if t != nil && t.Secure() && clusterHash != "" && t.Token.CAHash != clusterHash {
			judged, match = true, false
			cn.Findings = append(cn.Findings, k3s.Finding{Kind: k3s.FindingEffectiveTokenMismatch, File: t.File,
				Message: fmt.Sprintf("the token k3s uses (%s, line %d) pins CA %s, but the cluster serves %s: the node will not come back from its next restart",
					t.Key, t.Line, short(t.Token.CAHash), short(clusterHash))})
		}
	}
	if f.ServerTokenHash != "" && clusterHash != "" {
		judged = true
		if f.ServerTokenHash != clusterHash {
			match = false
			cn.Findings = append(cn.Findings, k3s.Finding{Kind: k3s.FindingTokenMismatch, File: cn.Layout.ServerToken(),
				Message: fmt.Sprintf("pins CA %s, not %s (%s)", short(f.ServerTokenHash), short(clusterHash), against)})
		}
	}
	if judged {
		cn.TokenCAMatch = &match
	}
}

// roleFindings flags a node without k3s data, or not of the role the
// inventory gives it.
func roleFindings(n *Node) []k3s.Finding {
	f := n.Facts
	switch {
	case f.Role == "":
		return []k3s.Finding{{Kind: k3s.FindingNoData,
			Message: fmt.Sprintf("no k3s data under %s: nothing to check", f.DataDir)}}
	case string(f.Role) != string(n.Role):
		return []k3s.Finding{{Kind: k3s.FindingRole,
			Message: fmt.Sprintf("the inventory says %s, the node is a %s", n.Role, f.Role)}}
	}
	return nil
}

// EarliestCert is a cluster's certificate that expires first, and where.
type EarliestCert struct {
	Node string
	Cert k3s.CheckedCert
}

// Earliest returns the cluster's first-expiring certificate of any kind
// and its first-expiring CA certificate; ok is false without certificates.
func (cc *ClusterCheck) Earliest() (first, ca EarliestCert, okAny, okCA bool) {
	for _, cn := range cc.Nodes {
		for _, c := range cn.Certs {
			if !okAny || c.NotAfter.Before(first.Cert.NotAfter) {
				first, okAny = EarliestCert{cn.Name, c}, true
			}
			if c.CA && c.Bundle && (!okCA || c.NotAfter.Before(ca.Cert.NotAfter)) {
				ca, okCA = EarliestCert{cn.Name, c}, true
			}
		}
	}
	return first, ca, okAny, okCA
}

// TokenCAMatch is whether every judged node's tokens pin the served CA;
// nil when no node could be judged.
func (cc *ClusterCheck) TokenCAMatch() *bool {
	var out *bool
	for _, cn := range cc.Nodes {
		if cn.TokenCAMatch == nil {
			continue
		}
		m := *cn.TokenCAMatch
		if out != nil {
			m = m && *out
		}
		out = &m
	}
	return out
}

// Counts tallies the cluster's certificates by status.
func (cc *ClusterCheck) Counts() map[k3s.CertStatus]int {
	out := map[k3s.CertStatus]int{}
	for _, cn := range cc.Nodes {
		for _, c := range cn.Certs {
			out[c.Status]++
		}
	}
	return out
}

// Problems reports whether the cluster has anything a check fails for: a
// certificate not OK or a finding. Unreachable nodes are not problems
// here; callers report them apart.
func (cc *ClusterCheck) Problems() bool {
	if len(cc.Findings) > 0 {
		return true
	}
	for s, n := range cc.Counts() {
		if s != k3s.StatusOK && n > 0 {
			return true
		}
	}
	return false
}
