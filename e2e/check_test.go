package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/fleetcert/fleetcert/e2e/harness"
	"github.com/fleetcert/fleetcert/internal/certtest"
)

// chkReport is `fleetcert check -o json` as a consumer reads it.
type chkReport struct {
	Summary struct {
		Nodes, NodesChecked, Unreachable, Certificates int
		OK, Warning, Expired, NotYetValid, Findings    int
		ExitCode                                       int
	} `json:"summary"`
	Clusters []struct {
		Name         string `json:"name"`
		NodesChecked int    `json:"nodesChecked"`
		CAHash       string `json:"caHash"`
		TokenCAMatch *bool  `json:"tokenCAMatch"`
		Served       []struct {
			Node, Hash, Via, Error string
		} `json:"served"`
		Findings []struct {
			Node, Kind, File, Message string
		} `json:"findings"`
		Unreachable []struct {
			Node, Error string
		} `json:"unreachable"`
		Nodes []struct {
			Node         string `json:"node"`
			TokenCAMatch *bool  `json:"tokenCAMatch"`
			CrossCheck   *struct {
				Ran            bool
				Skipped, Error string
				Compared       int
				Disagreements  []string
			} `json:"crossCheck"`
			Certificates []struct {
				File, Subject, Issuer, Status string
				Index                         int
				NotAfter                      time.Time
			} `json:"certificates"`
		} `json:"nodes"`
	} `json:"clusters"`
}

// chkRun runs the built fleetcert check and returns its exit code and
// output.
func chkRun(t *testing.T, ctx context.Context, f *harness.Fleet, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, fleetcertBinary(t), append([]string{"check", "-i", f.InventoryPath(), "--timeout", "20s"}, args...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
}

func chkJSON(t *testing.T, ctx context.Context, f *harness.Fleet, wantCode int, args ...string) chkReport {
	t.Helper()
	code, out, stderr := chkRun(t, ctx, f, append([]string{"-o", "json"}, args...)...)
	if code != wantCode {
		t.Fatalf("check -o json exited %d, want %d; stderr:\n%s\nstdout:\n%s", code, wantCode, stderr, out)
	}
	var r chkReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("check -o json: %v\n%s", err, out)
	}
	return r
}

// chkProm parses the exposition with Prometheus's own parser and returns
// metric name -> "cluster/node/filepath" -> value.
func chkProm(t *testing.T, text string) map[string]map[string]float64 {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("prometheus output does not parse: %v\n%s", err, text)
	}
	out := map[string]map[string]float64{}
	for name, fam := range fams {
		out[name] = map[string]float64{}
		for _, m := range fam.Metric {
			l := map[string]string{}
			for _, lp := range m.Label {
				l[lp.GetName()] = lp.GetValue()
			}
			key := l["cluster"] + "/" + l["node"]
			if l["filepath"] != "" {
				key += "/" + l["filepath"] + "/" + l["serial_number"]
			}
			out[name][key] = m.GetGauge().GetValue()
		}
	}
	return out
}

// chkLeaf makes a leaf certificate file (the leaf, then its CA) signed by a
// throwaway CA of the test's own, valid from notBefore to notAfter.
func chkLeaf(cn string, notBefore, notAfter time.Time) []byte {
	ca := certtest.NewCA(certtest.Spec{CN: "e2e-check-throwaway-ca",
		NotBefore: time.Now().Add(-800 * 24 * time.Hour), NotAfter: time.Now().Add(800 * 24 * time.Hour)})
	return ca.IssueLeaf(certtest.Spec{CN: cn, NotBefore: notBefore, NotAfter: notAfter,
		Usage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}).ChainPEM()
}

// TestCheck runs the built fleetcert's check on a fleet of its own (three
// nodes: the engine's inotify instances are shared with every other fleet
// running, and each node's systemd takes several): a fresh fleet is all OK
// in every output (exit 0); one node down is reported while the others are
// checked (exit 4); leaf certificates the test replaces with short-lived
// and expired ones are flagged (exit 1).
func TestCheck(t *testing.T) {
	requireEngine(t)
	ctx := ctxFor(t, 4*time.Minute)
	start := time.Now()
	f, err := harness.Start(ctx, t, harness.Spec{Clusters: []harness.ClusterSpec{
		{Name: "chk1", Servers: []harness.NodeSpec{{}}, Agents: []harness.NodeSpec{{Token: harness.SecureToken,
			TokenIn: []harness.TokenPlace{harness.InDistroEnvFile, harness.InConfigDropIn, harness.InExecStartEquals, harness.InTokenFileConfig}}}},
		{Name: "chk2", Servers: []harness.NodeSpec{{}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fleet up in %s", time.Since(start).Round(100*time.Millisecond))
	fleetcertBinary(t)

	// 0. The facts script check shares (one batch read of every file, one
	// systemctl for every unit) reads real systemd nodes right.
	var stdout bytes.Buffer
	cmd := exec.CommandContext(ctx, fleetcertBinary(t), "facts", "-i", f.InventoryPath(), "-o", "json")
	cmd.Stdout = &stdout
	if err := cmd.Run(); err != nil {
		t.Fatalf("facts: %v", err)
	}
	var facts []struct {
		Node  string `json:"node"`
		Facts struct {
			Hostname, Role, Unit, UnitState, CAHash string
		} `json:"facts"`
		Tokens []struct {
			File, Class string
		} `json:"tokens"`
	}
	if err := json.Unmarshal(envelope(t, stdout.Bytes(), "nodes"), &facts); err != nil || len(facts) != 3 {
		t.Fatalf("facts -o json: %v\n%s", err, stdout.String())
	}
	for _, n := range facts {
		hn := f.Node(n.Node)
		if n.Facts.Hostname != n.Node || n.Facts.UnitState != "active" || n.Facts.Unit != hn.Unit || n.Facts.Role != string(hn.Role) || n.Facts.CAHash == "" {
			t.Errorf("facts for %s: %+v", n.Node, n.Facts)
		}
		found := map[string]bool{}
		for _, tok := range n.Tokens {
			found[tok.File] = true
		}
		for _, p := range hn.TokenPlaces() {
			if !found[hn.TokenFile(p)] {
				t.Errorf("facts for %s: no token from %s (%s); tokens: %+v", n.Node, hn.TokenFile(p), p, n.Tokens)
			}
		}
	}

	// 1. Fresh fleet, JSON: every certificate OK, tokens pin the served CA,
	// and k3s's own `certificate check -o json` agrees.
	r := chkJSON(t, ctx, f, 0, "--cross-check")
	chkAgrees(t, r)
	if r.Summary.Nodes != 3 || r.Summary.NodesChecked != 3 || r.Summary.Certificates < 40 ||
		r.Summary.OK != r.Summary.Certificates || r.Summary.Findings != 0 {
		t.Errorf("fresh fleet summary: %+v", r.Summary)
	}
	for _, c := range r.Clusters {
		want := f.Cluster(c.Name).SecureToken
		if c.CAHash == "" || !strings.HasPrefix(want, "K10"+c.CAHash+"::") {
			t.Errorf("%s: caHash %s, the cluster's secure token is %.70s…", c.Name, c.CAHash, want)
		}
		if len(c.Served) != 1 || c.Served[0].Via != "/cacerts" {
			t.Errorf("%s: served %+v, want the server's /cacerts through the SSH connection", c.Name, c.Served)
		}
		if c.TokenCAMatch == nil || !*c.TokenCAMatch {
			t.Errorf("%s: tokenCAMatch %v, want true", c.Name, c.TokenCAMatch)
		}
		for _, n := range c.Nodes {
			files := map[string]bool{}
			for _, crt := range n.Certificates {
				files[filepath.Base(crt.File)] = true
			}
			want := []string{"client-ca.crt", "server-ca.crt", "client-kubelet.crt", "serving-kubelet.crt"}
			if strings.HasSuffix(n.Node, "-s1") {
				want = append(want, "dynamic-cert.json", "client-admin.crt", "serving-kube-apiserver.crt", "request-header-ca.crt")
			}
			for _, w := range want {
				if !files[w] {
					t.Errorf("%s/%s: %s not checked; files: %v", c.Name, n.Node, w, files)
				}
			}
		}
	}
	if a := f.Cluster("chk1").Agents[0]; !nodeMatch(r, "chk1", a.Name) {
		t.Errorf("chk1 agent with a secure token: tokenCAMatch not true")
	}

	// Table and prometheus, the latter written atomically to a file.
	// A healthy fleet shows only its summary; --all lists every cluster.
	code, out, stderr := chkRun(t, ctx, f)
	if code != 0 || !strings.Contains(out, "FLEET: 2 cluster(s), 3/3 node(s) checked") || strings.Contains(out, "CLUSTER chk1") {
		t.Errorf("table: exit %d\n%s\n%s", code, out, stderr)
	}
	code, out, stderr = chkRun(t, ctx, f, "--all")
	if code != 0 || !strings.Contains(out, "CLUSTER chk1: 2/2 nodes checked") || !strings.Contains(out, "token/CA match: yes") {
		t.Errorf("table: exit %d\n%s\n%s", code, out, stderr)
	}
	prom := filepath.Join(t.TempDir(), "fleetcert.prom")
	if code, _, stderr := chkRun(t, ctx, f, "-o", "prometheus", "--output-file", prom); code != 0 {
		t.Fatalf("prometheus: exit %d\n%s", code, stderr)
	}
	data, err := os.ReadFile(prom)
	if err != nil {
		t.Fatal(err)
	}
	m := chkProm(t, string(data))
	if len(m["x509_cert_not_after"]) != r.Summary.Certificates {
		t.Errorf("x509_cert_not_after has %d series, json %d certificates", len(m["x509_cert_not_after"]), r.Summary.Certificates)
	}
	for k, v := range m["x509_cert_expired"] {
		if v != 0 {
			t.Errorf("x509_cert_expired{%s} = %v on a fresh fleet", k, v)
		}
	}
	for _, n := range f.Nodes() {
		if v, ok := m["fleetcert_check_success"][n.Cluster+"/"+n.Name]; !ok || v != 1 {
			t.Errorf("fleetcert_check_success{%s} = %v, %v", n.Name, v, ok)
		}
	}

	// 2. One node down: reported, the others checked, exit 4.
	down := f.Cluster("chk2").Servers[0]
	if err := f.StopNode(ctx, down.Name); err != nil {
		t.Fatal(err)
	}
	r = chkJSON(t, ctx, f, 4)
	if r.Summary.Unreachable != 1 || r.Summary.NodesChecked != 2 {
		t.Errorf("one node down: %+v", r.Summary)
	}
	for _, c := range r.Clusters {
		if c.Name == "chk2" && (len(c.Unreachable) != 1 || c.Unreachable[0].Node != down.Name || c.NodesChecked != 0) {
			t.Errorf("chk2 with %s down: %+v", down.Name, c)
		}
	}

	// 3. Leaf certificates replaced on two nodes: one expiring in 10 days
	// (WARNING), one expired (EXPIRED); exit 1, the node down still listed.
	now := time.Now()
	agent := f.Cluster("chk1").Agents[0]
	server := f.Cluster("chk1").Servers[0]
	soon := agent.DataDir + "/agent/client-kube-proxy.crt"
	gone := server.DataDir + "/server/tls/client-scheduler.crt"
	if err := f.WriteFile(ctx, agent.Name, soon, chkLeaf("system:kube-proxy", now.Add(-time.Hour), now.Add(10*24*time.Hour)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := f.WriteFile(ctx, server.Name, gone, chkLeaf("system:kube-scheduler", now.Add(-400*24*time.Hour), now.Add(-24*time.Hour)), 0o644); err != nil {
		t.Fatal(err)
	}
	r = chkJSON(t, ctx, f, 1, "--cross-check")
	chkAgrees(t, r)
	if r.Summary.Warning != 1 || r.Summary.Expired != 1 || r.Summary.Unreachable != 1 {
		t.Errorf("after replacing two leafs: %+v", r.Summary)
	}
	if got := certStatus(r, agent.Name, soon); got != "WARNING" {
		t.Errorf("%s:%s is %q, want WARNING", agent.Name, soon, got)
	}
	if got := certStatus(r, server.Name, gone); got != "EXPIRED" {
		t.Errorf("%s:%s is %q, want EXPIRED", server.Name, gone, got)
	}
	code, out, _ = chkRun(t, ctx, f, "-o", "prometheus")
	if code != 1 {
		t.Errorf("prometheus after the change: exit %d", code)
	}
	m = chkProm(t, out)
	expired := 0
	for k, v := range m["x509_cert_expired"] {
		if v == 1 {
			expired++
			if !strings.Contains(k, gone) {
				t.Errorf("x509_cert_expired{%s} = 1", k)
			}
		}
	}
	if expired != 1 {
		t.Errorf("%d expired series, want 1", expired)
	}
	if v := m["fleetcert_check_success"]["chk2/"+down.Name]; v != 0 {
		t.Errorf("fleetcert_check_success for the stopped node = %v", v)
	}
	code, out, _ = chkRun(t, ctx, f, "--within", "5d")
	if code != 1 || !strings.Contains(out, " EXPIRED\n") || strings.Contains(out, " WARNING\n") || !strings.Contains(out, "UNREACHABLE "+down.Name) {
		t.Errorf("--within 5d: exit %d (want 1: the expired cert), the 10-day cert OK:\n%s", code, out)
	}
	t.Logf("TestCheck took %s", time.Since(start).Round(100*time.Millisecond))
}

// chkAgrees: the cross-check ran on every checked node, compared
// something, and k3s saw what fleetcert saw.
func chkAgrees(t *testing.T, r chkReport) {
	t.Helper()
	for _, c := range r.Clusters {
		for _, n := range c.Nodes {
			x := n.CrossCheck
			if x == nil || !x.Ran || x.Compared == 0 || len(x.Disagreements) > 0 {
				t.Errorf("%s/%s cross-check: %+v", c.Name, n.Node, x)
			}
		}
	}
}

func nodeMatch(r chkReport, cluster, node string) bool {
	for _, c := range r.Clusters {
		for _, n := range c.Nodes {
			if c.Name == cluster && n.Node == node {
				return n.TokenCAMatch != nil && *n.TokenCAMatch
			}
		}
	}
	return false
}

func certStatus(r chkReport, node, file string) string {
	for _, c := range r.Clusters {
		for _, n := range c.Nodes {
			if n.Node != node {
				continue
			}
			for _, crt := range n.Certificates {
				if crt.File == file && crt.Index == 0 {
					return crt.Status
				}
			}
		}
	}
	return ""
}
