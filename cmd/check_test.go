package cmd

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/crypto/ssh"

	"github.com/fleetcert/fleetcert/internal/certtest"
	"github.com/fleetcert/fleetcert/k3s"
	"github.com/fleetcert/fleetcert/orchestrator"
	"github.com/fleetcert/fleetcert/orchestrator/fleettest"
	"github.com/fleetcert/fleetcert/pki"
	"github.com/fleetcert/fleetcert/remote/sshtest"
)

// leafFiles issues a leaf certificate valid from notBefore to notAfter and
// returns its file as k3s writes it (the leaf, then the CA) and its key.
func leafFiles(ca *certtest.Cert, cn string, notBefore, notAfter time.Time) (crt, key []byte) {
	l := ca.IssueLeaf(certtest.Spec{CN: cn, NotBefore: notBefore, NotAfter: notAfter})
	return l.ChainPEM(), l.KeyPEM()
}

// dynamicCertJSON wraps a serving cert as dynamiclistener caches it.
func dynamicCertJSON(crt, key []byte) []byte {
	secret := map[string]any{"metadata": map[string]string{"name": "k3s-serving", "namespace": "kube-system"},
		"type": "kubernetes.io/tls", "data": map[string]string{
			"tls.crt": base64.StdEncoding.EncodeToString(crt), "tls.key": base64.StdEncoding.EncodeToString(key)}}
	out, _ := json.Marshal(secret)
	return out
}

// clusterPKI is one cluster's CAs, as k3s makes them.
type clusterPKI struct {
	server, client, requestHeader, etcdPeer, etcdServer *certtest.Cert
}

func newClusterPKI() clusterPKI {
	cas := certtest.NewK3sCAs(time.Now().Add(-time.Hour))
	return clusterPKI{server: cas["server-ca"], client: cas["client-ca"], requestHeader: cas["request-header-ca"],
		etcdPeer: cas["etcd/peer-ca"], etcdServer: cas["etcd/server-ca"]}
}

func (p clusterPKI) hash() string { return pki.HashCA(p.server.CertPEM()) }

// k3sNodeDir is a node's k3s files under root: data dir and config.yaml.
type k3sNodeDir struct {
	root, dataDir, config string
}

func (d k3sNodeDir) write(t testing.TB, rel string, data []byte, mode os.FileMode) {
	t.Helper()
	p := filepath.Join(d.root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // whatever the umask
		t.Fatal(err)
	}
}

// writeK3sNode lays out a node as k3s leaves it (docs/k3s-behaviour.md#layout): on a server
// the CAs and their keys, the nochain copies, every leaf with its key,
// etcd's, dynamic-cert.json and server/token; on every node the agent's
// CA copies and leafs; config.yaml with a secure token pinning tokenHash.
// Every leaf is valid for a year. About 30 certificate files on a server.
func writeK3sNode(t testing.TB, root string, p clusterPKI, server bool, tokenHash string) k3sNodeDir {
	t.Helper()
	d := k3sNodeDir{root: root, dataDir: filepath.Join(root, "data"), config: filepath.Join(root, "etc", "config.yaml")}
	now := time.Now()
	nb, na := now.Add(-time.Hour), now.Add(365*24*time.Hour)
	leaf := func(rel string, ca *certtest.Cert, cn string) {
		crt, key := leafFiles(ca, cn, nb, na)
		d.write(t, rel+".crt", crt, 0o644)
		d.write(t, rel+".key", key, 0o600)
	}
	if server {
		cas := map[string]*certtest.Cert{"server-ca": p.server, "client-ca": p.client, "request-header-ca": p.requestHeader,
			"etcd/peer-ca": p.etcdPeer, "etcd/server-ca": p.etcdServer}
		for name, ca := range cas {
			d.write(t, "data/server/tls/"+name+".crt", ca.CertPEM(), 0o644)
			d.write(t, "data/server/tls/"+name+".key", ca.KeyPEM(), 0o600)
			if !strings.HasPrefix(name, "etcd/") {
				d.write(t, "data/server/tls/"+name+".nochain.crt", ca.CertPEM(), 0o644)
			}
		}
		for _, l := range []struct{ name, cn string }{
			{"client-admin", "system:admin"}, {"client-auth-proxy", "system:auth-proxy"},
			{"client-controller", "system:kube-controller-manager"}, {"client-k3s-cloud-controller", "k3s-cloud-controller-manager"},
			{"client-k3s-controller", "system:k3s-controller"}, {"client-kube-apiserver", "system:apiserver"},
			{"client-kube-proxy", "system:kube-proxy"}, {"client-scheduler", "system:kube-scheduler"},
			{"client-supervisor", "system:k3s-supervisor"},
		} {
			leaf("data/server/tls/"+l.name, p.client, l.cn)
		}
		leaf("data/server/tls/serving-kube-apiserver", p.server, "kube-apiserver")
		leaf("data/server/tls/client-auth-proxy-rh", p.requestHeader, "system:auth-proxy")
		leaf("data/server/tls/etcd/client", p.etcdServer, "etcd-client")
		leaf("data/server/tls/etcd/server-client", p.etcdServer, "etcd-server")
		leaf("data/server/tls/etcd/peer-server-client", p.etcdPeer, "etcd-peer")
		crt, key := leafFiles(p.server, "k3s", nb, na)
		d.write(t, "data/server/tls/dynamic-cert.json", dynamicCertJSON(crt, key), 0o600)
		d.write(t, "data/server/tls/service.key", []byte("service account key\n"), 0o600)
		d.write(t, "data/server/token", []byte("K10"+p.hash()+"::server:s3cret\n"), 0o600)
	}
	d.write(t, "data/agent/server-ca.crt", p.server.CertPEM(), 0o644)
	d.write(t, "data/agent/client-ca.crt", p.client.CertPEM(), 0o644)
	leaf("data/agent/client-kubelet", p.client, "system:node:n")
	leaf("data/agent/serving-kubelet", p.server, "n")
	leaf("data/agent/client-kube-proxy", p.client, "system:kube-proxy")
	leaf("data/agent/client-k3s-controller", p.client, "system:k3s-controller")
	d.write(t, "etc/config.yaml", []byte("token: K10"+tokenHash+"::server:s3cret\n"), 0o600)
	return d
}

// checkFleet is an inventory of in-process SSH nodes under construction.
type checkFleet struct {
	*sshFleet
	clusters map[string]*strings.Builder
	order    []string
}

func newCheckFleet(t testing.TB) *checkFleet {
	return &checkFleet{sshFleet: newSSHFleet(t), clusters: map[string]*strings.Builder{}}
}

// serveNoForward serves a node whose sshd refuses forwarding: check then
// takes the served CA from server/token, with no k3s listening in a test.
func (f *checkFleet) serveNoForward(t testing.TB) *sshtest.Server {
	s := sshtest.Start(t, sshtest.Options{AuthorizedKeys: []ssh.PublicKey{f.pub}, NoForwarding: true})
	s.AppendKnownHosts(t, f.knownHosts, false)
	return s
}

func (f *checkFleet) add(t testing.TB, cluster, name, role string, d k3sNodeDir) {
	s := f.serveNoForward(t)
	f.addPort(cluster, name, role, s.Port(), d)
}

func (f *checkFleet) addPort(cluster, name, role string, port int, d k3sNodeDir) {
	b := f.clusters[cluster]
	if b == nil {
		b = &strings.Builder{}
		f.clusters[cluster] = b
		f.order = append(f.order, cluster)
	}
	fmt.Fprintf(b, "    - {role: %s, host: 127.0.0.1, name: %s, ssh: {port: %d}, dataDir: %q, configFile: %q}\n",
		role, name, port, d.dataDir, d.config)
}

// inventory writes hosts.yaml with servers and agents in their lists.
func (f *checkFleet) inventory(t testing.TB) string {
	var b strings.Builder
	b.WriteString(f.inventoryHeader())
	for _, c := range f.order {
		fmt.Fprintf(&b, "  - name: %s\n", c)
		for _, role := range []string{"server", "agent"} {
			var lines []string
			for _, l := range strings.Split(strings.TrimSpace(f.clusters[c].String()), "\n") {
				if strings.Contains(l, "{role: "+role+",") {
					lines = append(lines, "      - {"+strings.TrimPrefix(strings.TrimSpace(l), "- {role: "+role+", "))
				}
			}
			if len(lines) > 0 {
				fmt.Fprintf(&b, "    %ss:\n%s\n", role, strings.Join(lines, "\n"))
			}
		}
	}
	p := filepath.Join(f.dir, "hosts.yaml")
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func deadPort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

func runCheck(t testing.TB, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(append([]string{"check", "--timeout", "10s"}, args...), nil, &out, &errb)
	return code, out.String(), errb.String()
}

// checkJSON is the JSON report as a consumer reads it.
type checkJSON struct {
	CheckedAt     time.Time `json:"checkedAt"`
	WithinSeconds int64     `json:"withinSeconds"`
	Summary       struct {
		Clusters, Nodes, NodesChecked, Unreachable, Certificates int
		OK, Warning, Expired, NotYetValid, Findings, ExitCode    int
	} `json:"summary"`
	Clusters []struct {
		Name           string `json:"name"`
		NodesTotal     int    `json:"nodesTotal"`
		NodesChecked   int    `json:"nodesChecked"`
		CAHash         string `json:"caHash"`
		TokenCAMatch   *bool  `json:"tokenCAMatch"`
		EarliestExpiry *struct {
			Node, File, Status string
			NotAfter           time.Time
		} `json:"earliestExpiry"`
		CAExpiry *struct {
			Node, File string
			NotAfter   time.Time
		} `json:"caExpiry"`
		Served []struct {
			Node, Hash, Via string
		} `json:"served"`
		Findings []struct {
			Node, Kind, File, Message string
		} `json:"findings"`
		Unreachable []struct {
			Node, Host, Error string
		} `json:"unreachable"`
		Nodes []struct {
			Node         string `json:"node"`
			Role         string `json:"role"`
			TokenCAMatch *bool  `json:"tokenCAMatch"`
			Certificates []struct {
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
			} `json:"certificates"`
		} `json:"nodes"`
	} `json:"clusters"`
}

func parseCheckJSON(t testing.TB, out string) checkJSON {
	t.Helper()
	var r checkJSON
	dec := json.NewDecoder(strings.NewReader(out))
	if err := dec.Decode(&r); err != nil {
		t.Fatalf("check -o json: %v\n%s", err, out)
	}
	return r
}

// TestCheckFindsEveryProblem: one fleet holding each problem check knows,
// each on its own node, read over SSH from real files.
func TestCheckFindsEveryProblem(t *testing.T) {
	f := newCheckFleet(t)
	now := time.Now()
	// c1: a clean server, and an agent whose token pins another CA and
	// whose kubelet key anyone can read.
	p1 := newClusterPKI()
	s1 := writeK3sNode(t, filepath.Join(f.dir, "s1"), p1, true, p1.hash())
	a1 := writeK3sNode(t, filepath.Join(f.dir, "a1"), p1, false, strings.Repeat("ab", 32))
	if err := os.Chmod(filepath.Join(a1.dataDir, "agent", "client-kubelet.key"), 0o644); err != nil {
		t.Fatal(err)
	}
	f.add(t, "c1", "s1", "server", s1)
	f.add(t, "c1", "a1", "agent", a1)
	// c2: a server with an expired admin cert, a not-yet-valid kubelet
	// serving cert, a :6443 cert in dynamic-cert.json expiring in 10 days,
	// and the custom CA script's root and intermediate keys left behind.
	p2 := newClusterPKI()
	s2 := writeK3sNode(t, filepath.Join(f.dir, "s2"), p2, true, p2.hash())
	crt, key := leafFiles(p2.client, "system:admin", now.Add(-400*24*time.Hour), now.Add(-35*24*time.Hour))
	s2.write(t, "data/server/tls/client-admin.crt", crt, 0o644)
	crt, key = leafFiles(p2.server, "s2", now.Add(48*time.Hour), now.Add(400*24*time.Hour))
	s2.write(t, "data/agent/serving-kubelet.crt", crt, 0o644)
	crt, key = leafFiles(p2.server, "k3s", now.Add(-time.Hour), now.Add(10*24*time.Hour))
	s2.write(t, "data/server/tls/dynamic-cert.json", dynamicCertJSON(crt, key), 0o600)
	s2.write(t, "data/server/tls/root-ca.key", []byte("root key\n"), 0o600)
	s2.write(t, "data/server/tls/intermediate-ca.key", []byte("intermediate key\n"), 0o600)
	f.add(t, "c2", "s2", "server", s2)
	inv := f.inventory(t)

	code, out, stderr := runCheck(t, "-i", inv, "-o", "json")
	if code != ExitFailed {
		t.Fatalf("exit %d, want %d; stderr:\n%s\n%s", code, ExitFailed, stderr, out)
	}
	r := parseCheckJSON(t, out)
	if len(r.Clusters) != 2 || r.Summary.Nodes != 3 || r.Summary.NodesChecked != 3 || r.Summary.Unreachable != 0 || r.Summary.ExitCode != 1 {
		t.Fatalf("summary: %+v", r.Summary)
	}
	if r.WithinSeconds != 120*24*3600 {
		t.Errorf("withinSeconds = %d, want 120 days", r.WithinSeconds)
	}
	c1, c2 := r.Clusters[0], r.Clusters[1]

	// c1: every certificate OK; the agent's token mismatch and its key.
	if c1.CAHash != p1.hash() || len(c1.Served) != 1 || c1.Served[0].Via != "server/token" {
		t.Errorf("c1 served CA: %s %+v, want %s via server/token", c1.CAHash, c1.Served, p1.hash())
	}
	if c1.TokenCAMatch == nil || *c1.TokenCAMatch {
		t.Errorf("c1 tokenCAMatch = %v, want false", c1.TokenCAMatch)
	}
	for _, n := range c1.Nodes {
		wantMatch := n.Node == "s1"
		if n.TokenCAMatch == nil || *n.TokenCAMatch != wantMatch {
			t.Errorf("c1/%s tokenCAMatch = %v, want %v", n.Node, n.TokenCAMatch, wantMatch)
		}
		for _, c := range n.Certificates {
			if c.Status != "OK" {
				t.Errorf("c1/%s %s: %s, want OK", n.Node, c.File, c.Status)
			}
		}
	}
	if n := len(c1.Nodes[0].Certificates); n < 28 {
		t.Errorf("server s1: %d certificates, want every one of its ~30 files", n)
	}
	wantFindings(t, "c1", c1.Findings, map[string]string{
		"tokenCAMismatch":          "a1 " + a1.config,
		"effectiveTokenCAMismatch": "a1 " + a1.config,
		"keyReadable":              "a1 " + filepath.Join(a1.dataDir, "agent", "client-kubelet.key"),
	})

	// c2: the statuses, with k3s's names.
	status := map[string]string{}
	for _, c := range c2.Nodes[0].Certificates {
		if c.Index == 0 {
			status[strings.TrimPrefix(c.File, s2.dataDir+"/")] = c.Status
		}
		if c.Serial == "" || c.NotAfter.IsZero() || c.Subject == "" || c.Issuer == "" {
			t.Errorf("c2 %s: incomplete: %+v", c.File, c)
		}
	}
	for file, want := range map[string]string{
		"server/tls/client-admin.crt":       "EXPIRED",
		"agent/serving-kubelet.crt":         "NOT YET VALID",
		"server/tls/dynamic-cert.json":      "WARNING",
		"server/tls/client-scheduler.crt":   "OK",
		"server/tls/server-ca.crt":          "OK",
		"server/tls/etcd/peer-ca.crt":       "OK",
		"server/tls/etcd/server-client.crt": "OK",
	} {
		if status[file] != want {
			t.Errorf("c2 %s: status %q, want %q", file, status[file], want)
		}
	}
	if e := c2.EarliestExpiry; e == nil || e.Status != "EXPIRED" || !strings.HasSuffix(e.File, "client-admin.crt") {
		t.Errorf("c2 earliest expiry: %+v", e)
	}
	if e := c2.CAExpiry; e == nil || !e.NotAfter.Equal(p2.server.Cert.NotAfter) && !e.NotAfter.Before(p2.server.Cert.NotAfter.Add(time.Second)) {
		t.Errorf("c2 CA expiry: %+v", e)
	}
	if c2.TokenCAMatch == nil || !*c2.TokenCAMatch {
		t.Errorf("c2 tokenCAMatch = %v, want true", c2.TokenCAMatch)
	}
	wantFindings(t, "c2", c2.Findings, map[string]string{
		"caKeyOnNode": "s2 " + filepath.Join(s2.dataDir, "server", "tls", "intermediate-ca.key"),
	})
	caKeys := 0
	for _, fd := range c2.Findings {
		if fd.Kind == "caKeyOnNode" {
			caKeys++
		}
	}
	if caKeys != 2 {
		t.Errorf("c2: %d CA key findings, want root-ca.key and intermediate-ca.key: %+v", caKeys, c2.Findings)
	}
	if strings.Contains(out, "s3cret") || strings.Contains(stderr, "s3cret") {
		t.Error("a token secret leaked into the output")
	}

	// The table: sorted by residual time, summary line per cluster.
	code, out, _ = runCheck(t, "-i", inv)
	if code != ExitFailed {
		t.Errorf("table: exit %d", code)
	}
	for _, want := range []string{"CLUSTER c2: 1/1 nodes checked", "token/CA match: NO", "FINDING caKeyOnNode", "FINDING tokenCAMismatch: a1", "EXPIRED", "NOT YET VALID", "WARNING"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	c2Table := out[strings.Index(out, "CLUSTER c2"):]
	if i, j := strings.Index(c2Table, "client-admin.crt"), strings.Index(c2Table, "dynamic-cert.json"); i < 0 || j < 0 || i > j {
		t.Errorf("table not sorted by residual time (expired admin cert first, then the 10-day serving cert):\n%s", c2Table)
	}

	// --within 5d: the serving cert due in 10 days is OK now.
	_, out, _ = runCheck(t, "-i", inv, "-o", "json", "--within", "5d", "--cluster", "c2")
	r = parseCheckJSON(t, out)
	for _, c := range r.Clusters[0].Nodes[0].Certificates {
		if strings.HasSuffix(c.File, "dynamic-cert.json") && c.Status != "OK" {
			t.Errorf("--within 5d: dynamic-cert.json %s, want OK", c.Status)
		}
	}
}

func wantFindings(t *testing.T, cluster string, got []struct{ Node, Kind, File, Message string }, want map[string]string) {
	t.Helper()
	have := map[string]bool{}
	for _, f := range got {
		have[f.Kind+" "+f.Node+" "+f.File] = true
		if f.Message == "" {
			t.Errorf("%s: finding without message: %+v", cluster, f)
		}
	}
	for kind, where := range want {
		if !have[kind+" "+where] {
			t.Errorf("%s: no %s finding for %s; findings: %+v", cluster, kind, where, got)
		}
	}
	kinds := map[string]bool{}
	for kind := range want {
		kinds[kind] = true
	}
	for _, f := range got {
		if !kinds[f.Kind] {
			t.Errorf("%s: unexpected finding %+v", cluster, f)
		}
	}
}

// TestCheckCleanFleetAndUnreachable: a clean fleet exits 0; the prometheus
// exposition, written atomically to a file, parses with Prometheus's own
// parser; a node that cannot be reached makes it exit 4 while the others
// are still checked.
func TestCheckCleanFleetAndUnreachable(t *testing.T) {
	f := newCheckFleet(t)
	p := newClusterPKI()
	s1 := writeK3sNode(t, filepath.Join(f.dir, "s1"), p, true, p.hash())
	a1 := writeK3sNode(t, filepath.Join(f.dir, "a1"), p, false, p.hash())
	f.add(t, "edge", "s1", "server", s1)
	f.add(t, "edge", "a1", "agent", a1)
	inv := f.inventory(t)

	prom := filepath.Join(t.TempDir(), "fleetcert.prom")
	os.WriteFile(prom, []byte("old\n"), 0o644)
	code, out, stderr := runCheck(t, "-i", inv, "-o", "prometheus", "--output-file", prom)
	if code != ExitOK || out != "" {
		t.Fatalf("clean fleet: exit %d, stdout %q; stderr:\n%s", code, out, stderr)
	}
	if entries, _ := os.ReadDir(filepath.Dir(prom)); len(entries) != 1 {
		t.Errorf("temp files left next to the output: %v", entries)
	}
	if st, _ := os.Stat(prom); st.Mode().Perm() != 0o644 {
		t.Errorf("%s mode %v, want 0644 (node_exporter reads it)", prom, st.Mode())
	}
	families := parseProm(t, prom)
	notAfter := families["x509_cert_not_after"]
	if len(notAfter) < 30 {
		t.Fatalf("x509_cert_not_after: %v", notAfter)
	}
	for _, m := range notAfter {
		labels := m.labels
		for _, name := range []string{"cluster", "node", "filename", "filepath", "subject_CN", "issuer_CN", "serial_number"} {
			if labels[name] == "" {
				t.Errorf("x509_cert_not_after without %s: %v", name, labels)
			}
		}
		if v := m.value; v < float64(time.Now().Unix()) {
			t.Errorf("not_after %v in the past for %v", v, labels)
		}
	}
	for _, name := range []string{"x509_cert_not_before", "x509_cert_expired", "fleetcert_check_success", "fleetcert_token_ca_match", "fleetcert_check_findings", "fleetcert_check_timestamp_seconds"} {
		if families[name] == nil {
			t.Errorf("no %s", name)
		}
	}
	for _, m := range families["x509_cert_expired"] {
		if m.value != 0 {
			t.Errorf("expired = 1 on a fresh fleet: %v", m)
		}
	}
	if got := promValues(families["fleetcert_check_success"]); got["edge/s1"] != 1 || got["edge/a1"] != 1 {
		t.Errorf("fleetcert_check_success: %v", got)
	}

	// One more node, unreachable: exit 4, reported, the rest checked.
	f.addPort("edge", "a2", "agent", deadPort(t), a1)
	inv = f.inventory(t)
	code, out, _ = runCheck(t, "-i", inv, "-o", "json")
	if code != ExitUnreachable {
		t.Fatalf("one node down: exit %d, want %d\n%s", code, ExitUnreachable, out)
	}
	r := parseCheckJSON(t, out)
	c := r.Clusters[0]
	if c.NodesTotal != 3 || c.NodesChecked != 2 || len(c.Unreachable) != 1 || c.Unreachable[0].Node != "a2" || c.Unreachable[0].Error == "" {
		t.Errorf("unreachable: %+v", c)
	}
	if r.Summary.ExitCode != ExitUnreachable || r.Summary.Warning+r.Summary.Expired+r.Summary.NotYetValid+r.Summary.Findings != 0 {
		t.Errorf("summary %+v", r.Summary)
	}
	code, out, _ = runCheck(t, "-i", inv, "-o", "prometheus")
	if code != ExitUnreachable {
		t.Errorf("prometheus: exit %d", code)
	}
	families = parsePromText(t, out)
	if got := promValues(families["fleetcert_check_success"]); got["edge/a2"] != 0 || got["edge/s1"] != 1 || len(got) != 3 {
		t.Errorf("fleetcert_check_success with a node down: %v", got)
	}
	code, out, _ = runCheck(t, "-i", inv)
	if code != ExitUnreachable || !strings.Contains(out, "UNREACHABLE a2") || !strings.Contains(out, "2/3 nodes checked (1 unreachable)") {
		t.Errorf("table, exit %d:\n%s", code, out)
	}
}

// promSample is one parsed sample: its labels and value.
type promSample struct {
	labels map[string]string
	value  float64
}

func parseProm(t *testing.T, path string) map[string][]promSample {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return parsePromText(t, string(data))
}

// parsePromText parses the text exposition with Prometheus's own parser
// (which rejects malformed lines, bad escapes, and a family whose samples
// are not together) and returns every gauge sample by metric name.
func parsePromText(t testing.TB, text string) map[string][]promSample {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("exposition does not parse: %v\n%s", err, text)
	}
	out := map[string][]promSample{}
	for name, f := range fams {
		if f.GetType().String() != "GAUGE" || f.GetHelp() == "" {
			t.Errorf("%s: type %s, help %q: want a gauge with HELP", name, f.GetType(), f.GetHelp())
		}
		seen := map[string]bool{}
		for _, m := range f.Metric {
			s := promSample{labels: map[string]string{}, value: m.GetGauge().GetValue()}
			for _, l := range m.Label {
				s.labels[l.GetName()] = l.GetValue()
			}
			key := fmt.Sprint(s.labels)
			if seen[key] {
				t.Errorf("%s: duplicate series %s", name, key)
			}
			seen[key] = true
			out[name] = append(out[name], s)
		}
	}
	return out
}

// promValues maps cluster/node to the sample's value.
func promValues(samples []promSample) map[string]float64 {
	out := map[string]float64{}
	for _, s := range samples {
		out[s.labels["cluster"]+"/"+s.labels["node"]] = s.value
	}
	return out
}

func TestCheckUsage(t *testing.T) {
	inv := filepath.Join(t.TempDir(), "hosts.yaml")
	os.WriteFile(inv, []byte("clusters:\n  - name: c\n    servers:\n      - {host: 127.0.0.1}\n"), 0o600)
	for _, args := range [][]string{
		{"-i", inv, "--within", "soon"},
		{"-i", inv, "--within", "-3d"},
		{"-i", inv, "--within", "0"},
		{"-i", inv, "-o", "yaml"},
		{"-i", inv, "--output-file", "/nonexistent-dir/x.prom"},
	} {
		if code, _, stderr := runCheck(t, args...); code != ExitUsage || stderr == "" {
			t.Errorf("check %v: exit %d (want %d), stderr %q", args, code, ExitUsage, stderr)
		}
	}
}

// TestCheckCrossCheck: with --cross-check, a node whose k3s has
// `certificate check --output json` (a stand-in k3s on the node's PATH
// here) is compared with fleetcert's own reading; a node without k3s is
// skipped; the verdict stays fleetcert's.
func TestCheckCrossCheck(t *testing.T) {
	f := newCheckFleet(t)
	p := newClusterPKI()
	s1 := writeK3sNode(t, filepath.Join(f.dir, "s1"), p, true, p.hash())
	a1 := writeK3sNode(t, filepath.Join(f.dir, "a1"), p, false, p.hash())

	// k3s's view of s1: server-ca.crt as it is, client-admin.crt EXPIRED
	// (it is not), and the CA inside a leaf file (not compared).
	admin, err := os.ReadFile(filepath.Join(s1.dataDir, "server", "tls", "client-admin.crt"))
	if err != nil {
		t.Fatal(err)
	}
	adminCert, _ := pem.Decode(admin)
	ac, _ := x509.ParseCertificate(adminCert.Bytes)
	entries := []map[string]any{
		{"Filename": filepath.Join(s1.dataDir, "server", "tls", "server-ca.crt"), "Subject": p.server.Cert.Subject.CommonName, "Issuer": p.server.Cert.Subject.CommonName,
			"Usages": []string{"CertSign"}, "ExpiryTime": p.server.Cert.NotAfter, "ResidualTime": int64(time.Until(p.server.Cert.NotAfter)), "Status": "OK"},
		{"Filename": filepath.Join(s1.dataDir, "server", "tls", "client-admin.crt"), "Subject": "system:admin", "Issuer": p.client.Cert.Subject.CommonName,
			"Usages": []string{"ClientAuth"}, "ExpiryTime": ac.NotAfter, "ResidualTime": -1, "Status": "EXPIRED"},
		{"Filename": filepath.Join(s1.dataDir, "server", "tls", "client-admin.crt"), "Subject": p.client.Cert.Subject.CommonName, "Issuer": p.client.Cert.Subject.CommonName,
			"Usages": []string{"CertSign"}, "ExpiryTime": p.client.Cert.NotAfter, "ResidualTime": 1, "Status": "OK"},
	}
	out, _ := json.Marshal(map[string]any{"Certificates": entries})
	bin := filepath.Join(f.dir, "bin")
	os.MkdirAll(bin, 0o755)
	os.WriteFile(filepath.Join(bin, "check.json"), out, 0o644)
	os.WriteFile(filepath.Join(bin, "k3s"), []byte(`#!/bin/sh
case "$1" in
--version) echo 'k3s version v1.33.5+k3s1 (abcdef12)'; echo 'go version go1.24.6' ;;
certificate) [ "$2" = check ] && [ "$3" = -d ] && [ "$4" = '`+s1.dataDir+`' ] && [ "$5 $6" = '--output json' ] || exit 3
	cat "$(dirname "$0")/check.json" ;;
*) exit 2 ;;
esac
`), 0o755)
	withK3s := sshtest.Start(t, sshtest.Options{AuthorizedKeys: []ssh.PublicKey{f.pub}, NoForwarding: true,
		Env: []string{"PATH=" + os.Getenv("PATH") + ":" + bin}})
	withK3s.AppendKnownHosts(t, f.knownHosts, false)
	f.addPort("c", "s1", "server", withK3s.Port(), s1)
	f.add(t, "c", "a1", "agent", a1)
	inv := f.inventory(t)

	code, stdout, stderr := runCheck(t, "-i", inv, "-o", "json", "--cross-check")
	if code != ExitOK {
		t.Fatalf("exit %d (the cross-check never decides the verdict); stderr:\n%s", code, stderr)
	}
	var r struct {
		Clusters []struct {
			Nodes []struct {
				Node       string `json:"node"`
				CrossCheck *struct {
					Ran           bool     `json:"ran"`
					Skipped       string   `json:"skipped"`
					Compared      int      `json:"compared"`
					Disagreements []string `json:"disagreements"`
				} `json:"crossCheck"`
			} `json:"nodes"`
		} `json:"clusters"`
	}
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		t.Fatal(err)
	}
	x := r.Clusters[0].Nodes[0].CrossCheck
	if x == nil || !x.Ran || x.Compared != 2 || len(x.Disagreements) != 1 || !strings.Contains(x.Disagreements[0], "client-admin.crt (system:admin): k3s says EXPIRED, fleetcert says OK") {
		t.Errorf("s1 cross-check: %+v", x)
	}
	if y := r.Clusters[0].Nodes[1].CrossCheck; y == nil || y.Ran || y.Skipped == "" {
		t.Errorf("a1 (no k3s) cross-check: %+v", y)
	}
	_, table, _ := runCheck(t, "-i", inv, "--cross-check")
	if !strings.Contains(table, "CROSS-CHECK s1: client-admin.crt") || !strings.Contains(table, "CROSS-CHECK a1: skipped") {
		t.Errorf("table:\n%s", table)
	}
	// Without the flag, no k3s command runs: one round trip per node.
	before := withK3s.Execs()
	_, stdout, _ = runCheck(t, "-i", inv, "-o", "json")
	if strings.Contains(stdout, "crossCheck") || withK3s.Execs()-before != 1 {
		t.Errorf("without --cross-check: %d round trips, crossCheck in output: %v", withK3s.Execs()-before, strings.Contains(stdout, "crossCheck"))
	}
}

// TestCheckClusterConsistency: servers serving different CAs, an agent
// holding another CA bundle than its cluster serves, and a node without
// k3s data are findings too.
func TestCheckClusterConsistency(t *testing.T) {
	f := newCheckFleet(t)
	p, other := newClusterPKI(), newClusterPKI()
	s1 := writeK3sNode(t, filepath.Join(f.dir, "s1"), p, true, p.hash())
	s2 := writeK3sNode(t, filepath.Join(f.dir, "s2"), other, true, other.hash()) // serves another CA
	a1 := writeK3sNode(t, filepath.Join(f.dir, "a1"), p, false, p.hash())
	a1.write(t, "data/agent/server-ca.crt", other.server.CertPEM(), 0o644) // holds another CA
	empty := k3sNodeDir{root: filepath.Join(f.dir, "e1"), dataDir: filepath.Join(f.dir, "e1", "data"), config: filepath.Join(f.dir, "e1", "config.yaml")}
	f.add(t, "c", "s1", "server", s1)
	f.add(t, "c", "s2", "server", s2)
	f.add(t, "c", "a1", "agent", a1)
	f.add(t, "c", "e1", "agent", empty)
	code, out, stderr := runCheck(t, "-i", f.inventory(t), "-o", "json")
	if code != ExitFailed {
		t.Fatalf("exit %d; stderr:\n%s", code, stderr)
	}
	c := parseCheckJSON(t, out).Clusters[0]
	if c.CAHash != p.hash() {
		t.Errorf("caHash %s, want the first server's %s", c.CAHash, p.hash())
	}
	wantFindings(t, "c", c.Findings, map[string]string{
		"serversServeDifferentCAs": "s2 ",
		"tokenCAMismatch":          "s2 " + s2.config,
		"effectiveTokenCAMismatch": "s2 " + s2.config,
		"heldCAMismatch":           "a1 " + filepath.Join(a1.dataDir, "agent", "server-ca.crt"),
		"noK3sData":                "e1 ",
	})
}

// TestCheckConcurrencyFitsTheFileLimit: a concurrency the open-file limit
// has no room for is lowered to what fits, never below one.
func TestCheckConcurrencyFitsTheFileLimit(t *testing.T) {
	for _, tt := range []struct {
		want      int
		limit     uint64
		fit, need int
	}{
		{256, 1 << 20, 256, 544},
		{256, 544, 256, 544},
		{256, 256, 112, 544},
		{64, 100, 34, 160},
		{8, 10, 1, 48},
		{1, 0, 1, 34},
	} {
		fit, need := fitConcurrency(tt.want, tt.limit)
		if fit != tt.fit || need != tt.need {
			t.Errorf("fitConcurrency(%d, %d) = %d, %d; want %d, %d", tt.want, tt.limit, fit, need, tt.fit, tt.need)
		}
	}
}

// TestCheckJSONWrittenAsTheEncoderWould: the report streamed a cluster at
// a time is byte for byte what json.Encoder with a two-space indent
// writes.
func TestCheckJSONWrittenAsTheEncoderWould(t *testing.T) {
	m, err := fleettest.Default()
	if err != nil {
		t.Fatal(err)
	}
	fl := fleettest.New(m, fleettest.Spec{Clusters: 3, Servers: 2, Agents: 1})
	nodes := orchestrator.Connect(t.Context(), fl.Nodes(), fl.Dial, 4)
	nodes[1].Err, nodes[1].Conn = errors.New("gone"), nil
	now := time.Now()
	checked := orchestrator.Check(t.Context(), nodes, orchestrator.CheckOptions{Now: now})
	for _, r := range []checkReport{newCheckReport(checked, now, k3s.DefaultCheckWithin), newCheckReport(nil, now, k3s.DefaultCheckWithin)} {
		var want, got bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			t.Fatal(err)
		}
		if err := writeCheckJSON(&got, r); err != nil {
			t.Fatal(err)
		}
		if got.String() != want.String() {
			t.Fatalf("streamed JSON differs from the encoder's:\n%s\nwant:\n%s", got.String(), want.String())
		}
	}
}
