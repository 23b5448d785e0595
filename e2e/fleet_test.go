package e2e

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fleetcert/fleetcert/e2e/harness"
	"github.com/fleetcert/fleetcert/internal/certtest"
)

// Tests of `fleetcert rotate` (leaf certificates, issue 6) and of fleet
// rollouts (waves, failure budget, shards, interruption; issue 7).

// fleetReport is the JSON report of a rollout (-o json or --report).
type fleetReport struct {
	RunID   string `json:"runId"`
	Stopped string `json:"stopped"`
	Waves   []struct {
		Index    int       `json:"index"`
		Clusters []string  `json:"clusters"`
		Started  time.Time `json:"started"`
		Finished time.Time `json:"finished"`
	} `json:"waves"`
	Clusters []clusterReport `json:"clusters"`
}

func parseFleetReport(t *testing.T, data string) fleetReport {
	t.Helper()
	var rep fleetReport
	if err := json.Unmarshal([]byte(data), &rep); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, data)
	}
	return rep
}

func (r fleetReport) outcomes() map[string]string {
	out := map[string]string{}
	for _, c := range r.Clusters {
		out[c.Cluster] = c.Outcome
	}
	return out
}

// leafSerials maps every leaf certificate file of a node (CA bundles left
// out) to the serial of its first certificate.
func leafSerials(t *testing.T, ctx context.Context, f *harness.Fleet, n *harness.Node) map[string]string {
	t.Helper()
	r, err := f.Exec(ctx, n.Name, "find "+n.DataDir+"/server/tls "+n.DataDir+"/agent -maxdepth 2 -name '*.crt' ! -name '*-ca.crt' ! -name '*-ca.nochain.crt' 2>/dev/null")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, p := range strings.Fields(r.Stdout) {
		if strings.Contains(p, "/tls-") {
			continue // k3s's backups of earlier rotations
		}
		data, err := f.ReadFile(ctx, n.Name, p)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := pem.Decode(data)
		if b == nil {
			t.Fatalf("%s:%s: no PEM", n.Name, p)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatalf("%s:%s: %v", n.Name, p, err)
		}
		out[p] = c.SerialNumber.String()
	}
	if len(out) < 4 {
		t.Fatalf("%s: only %d leaf certificates found", n.Name, len(out))
	}
	return out
}

// caFiles are the CA bundles of a node, which rotate must never touch.
func caFiles(t *testing.T, ctx context.Context, f *harness.Fleet, n *harness.Node) map[string]string {
	t.Helper()
	sums, err := f.Checksums(ctx, n.Name, n.DataDir+"/agent/server-ca.crt", n.DataDir+"/agent/client-ca.crt")
	if err != nil {
		t.Fatal(err)
	}
	if n.Role == "server" {
		more, err := f.Checksums(ctx, n.Name, n.DataDir+"/server/tls/server-ca.crt", n.DataDir+"/server/tls/client-ca.crt",
			n.DataDir+"/server/tls/request-header-ca.crt", n.DataDir+"/server/tls/service.key")
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range more {
			sums[k] = v
		}
	}
	return sums
}

// shortLivedCert is a leaf valid for days more days, signed by a throwaway
// CA: only its expiry matters to the test.
func shortLivedCert(cn string, days int) []byte {
	return certtest.NewCA(certtest.Spec{CN: "e2e-throwaway-ca"}).IssueLeaf(certtest.Spec{CN: cn,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Duration(days) * 24 * time.Hour)}).CertPEM()
}

// TestRotateLeafCerts: --only-expiring-within touches only the node whose
// certificate the test made short-lived; a full rotate renews every leaf
// certificate (new serials) and keeps every CA; with a node down, the
// others are renewed and the run exits 1 naming it.
func TestRotateLeafCerts(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 12*time.Minute)
	f := startRotFleet(t, ctx, harness.ClusterSpec{Name: "leaf", Servers: []harness.NodeSpec{{}}, Agents: []harness.NodeSpec{{}, {}}})
	nodes := f.Cluster("leaf").Nodes()
	server, a1, a2 := nodes[0], nodes[1], nodes[2]
	inv := f.InventoryPath()

	t.Run("only expiring", func(t *testing.T) {
		starts := map[string]string{}
		for _, n := range nodes {
			starts[n.Name] = unitStart(t, ctx, f, n)
		}
		kubeProxy := a2.DataDir + "/agent/client-kube-proxy.crt"
		if err := f.WriteFile(ctx, a2.Name, kubeProxy, shortLivedCert("system:kube-proxy", 10), 0o644); err != nil {
			t.Fatal(err)
		}
		r := fleetcert(t, ctx, "rotate", "-i", inv, "--only-expiring-within", "30d", "-o", "json", "--log-format", "json")
		if r.Code != 0 {
			t.Fatalf("%s", r)
		}
		rep := r.report(t)
		for _, n := range nodes {
			restarted := unitStart(t, ctx, f, n) != starts[n.Name]
			if want := n == a2; restarted != want {
				t.Errorf("%s restarted=%v, want %v (report: %s)", n.Name, restarted, want, rep.nodeOutcome(n.Name))
			}
		}
		if got := rep.nodeOutcome(a2.Name); got != "restarted" {
			t.Errorf("%s outcome %q", a2.Name, got)
		}
		data, err := f.ReadFile(ctx, a2.Name, kubeProxy)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := pem.Decode(data)
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil || time.Until(c.NotAfter) < 300*24*time.Hour {
			t.Errorf("renewed kube-proxy cert: %v, expires %s", err, c.NotAfter)
		}
	})

	t.Run("all nodes", func(t *testing.T) {
		serials, cas := map[string]map[string]string{}, map[string]map[string]string{}
		for _, n := range nodes {
			serials[n.Name], cas[n.Name] = leafSerials(t, ctx, f, n), caFiles(t, ctx, f, n)
		}
		r := fleetcert(t, ctx, "rotate", "-i", inv, "--keep-backups", "1", "-o", "json")
		if r.Code != 0 {
			t.Fatalf("%s", r)
		}
		for _, n := range nodes {
			after := leafSerials(t, ctx, f, n)
			for p, s := range serials[n.Name] {
				if after[p] == s {
					t.Errorf("%s: %s kept serial %s", n.Name, p, s)
				}
			}
			if got := caFiles(t, ctx, f, n); !maps.Equal(got, cas[n.Name]) {
				t.Errorf("%s: a CA changed: before %v after %v", n.Name, cas[n.Name], got)
			}
		}
		backups, _ := f.Exec(ctx, server.Name, "ls -d "+server.DataDir+"/server/tls-*")
		if got := len(strings.Fields(backups.Stdout)); got != 1 {
			t.Errorf("--keep-backups 1 left %d backups on %s: %s", got, server.Name, backups.Stdout)
		}
	})

	t.Run("node down", func(t *testing.T) {
		if err := f.StopNode(ctx, a1.Name); err != nil {
			t.Fatal(err)
		}
		defer f.StartNode(context.Background(), a1.Name)
		before := leafSerials(t, ctx, f, a2)
		r := fleetcert(t, ctx, "rotate", "-i", inv, "-o", "json", "--timeout", "10s")
		if r.Code != 1 {
			t.Fatalf("want exit 1 with a node down: %s", r)
		}
		rep := r.report(t)
		if rep.nodeOutcome(a1.Name) != "unreachable" || !strings.Contains(rep.Error, a1.Name) {
			t.Errorf("down node not reported: outcome %q, error %q", rep.nodeOutcome(a1.Name), rep.Error)
		}
		for _, n := range []*harness.Node{server, a2} {
			if got := rep.nodeOutcome(n.Name); got != "restarted" {
				t.Errorf("%s: outcome %q, want restarted", n.Name, got)
			}
		}
		after := leafSerials(t, ctx, f, a2)
		for p, s := range before {
			if after[p] == s {
				t.Errorf("%s: %s not renewed while another node was down", a2.Name, p)
			}
		}
	})
}

// withLabels writes a copy of the fleet's inventory where the named
// clusters carry labels.
func withLabels(t *testing.T, f *harness.Fleet, labels map[string]string) string {
	t.Helper()
	data, err := os.ReadFile(f.InventoryPath())
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	for cluster, l := range labels {
		old := "  - name: \"" + cluster + "\"\n"
		if !strings.Contains(s, old) {
			t.Fatalf("inventory has no cluster %s", cluster)
		}
		s = strings.Replace(s, old, old+"    labels: {"+l+"}\n", 1)
	}
	p := filepath.Join(t.TempDir(), "labelled.yaml")
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRollout runs `fleetcert rotate` over four single-server clusters:
// waves in order, a failing canary stopping the rollout within the failure
// budget and not beyond it, shards covering the fleet exactly once, and an
// interrupted run that leaves a report and is completed by a rerun.
func TestRollout(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 15*time.Minute)
	names := []string{"wa", "wb", "wc", "wd"}
	var specs []harness.ClusterSpec
	for _, n := range names {
		specs = append(specs, harness.ClusterSpec{Name: n, Servers: []harness.NodeSpec{{}}})
	}
	f := startRotFleet(t, ctx, specs...)
	inv := f.InventoryPath()

	t.Run("waves in order", func(t *testing.T) {
		reportFile := filepath.Join(t.TempDir(), "report.json")
		r := fleetcert(t, ctx, "rotate", "-i", inv, "--waves", "1,50%,100%", "--order", "name", "--report", reportFile, "-o", "json")
		if r.Code != 0 {
			t.Fatalf("%s", r)
		}
		data, err := os.ReadFile(reportFile)
		if err != nil {
			t.Fatal(err)
		}
		rep := parseFleetReport(t, string(data))
		want := [][]string{{"wa"}, {"wb", "wc"}, {"wd"}}
		if len(rep.Waves) != len(want) {
			t.Fatalf("waves %+v", rep.Waves)
		}
		for i, w := range rep.Waves {
			if strings.Join(w.Clusters, ",") != strings.Join(want[i], ",") {
				t.Errorf("wave %d: %v, want %v", i+1, w.Clusters, want[i])
			}
			if i > 0 && w.Started.Before(rep.Waves[i-1].Finished) {
				t.Errorf("wave %d started %s before wave %d finished %s", i+1, w.Started, i, rep.Waves[i-1].Finished)
			}
		}
		for c, o := range rep.outcomes() {
			if o != "done" {
				t.Errorf("%s: %s", c, o)
			}
		}
	})

	t.Run("shards", func(t *testing.T) {
		seen := map[string]int{}
		for _, shard := range []string{"0/2", "1/2"} {
			r := fleetcert(t, ctx, "rotate", "-i", inv, "--shard", shard, "--dry-run", "-o", "json")
			if r.Code != 0 {
				t.Fatalf("%s", r)
			}
			for _, c := range parseFleetReport(t, r.Stdout).Clusters {
				seen[c.Cluster]++
			}
		}
		var got []string
		for c, n := range seen {
			if n != 1 {
				t.Errorf("%s in %d shards", c, n)
			}
			got = append(got, c)
		}
		sort.Strings(got)
		if strings.Join(got, ",") != strings.Join(names, ",") {
			t.Errorf("shards covered %v, want %v", got, names)
		}
	})

	t.Run("failing canary", func(t *testing.T) {
		canary := f.Cluster("wc").Nodes()[0]
		labelled := withLabels(t, f, map[string]string{"wc": "ring: canary"})
		if err := f.WriteFile(ctx, canary.Name, "/etc/k3semu/fault", []byte("hang-start\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		others := map[string]map[string]map[string]string{}
		for _, c := range []string{"wa", "wb", "wd"} {
			others[c] = fleetChecksums(t, ctx, f, c)
		}
		r := fleetcert(t, ctx, "rotate", "-i", labelled, "--canary-selector", "ring=canary", "--waves", "1",
			"--max-failures", "0", "--health-timeout", "20s", "-o", "json")
		if r.Code != 1 {
			t.Fatalf("want exit 1: %s", r)
		}
		rep := parseFleetReport(t, r.Stdout)
		out := rep.outcomes()
		if out["wc"] != "failed" || out["wa"] != "not-started" || out["wb"] != "not-started" || out["wd"] != "not-started" {
			t.Errorf("outcomes %v (stopped: %q)", out, rep.Stopped)
		}
		for c, sums := range others {
			assertUnchanged(t, ctx, f, c, sums, "a rollout stopped by its canary")
		}

		// Within a budget of one failure the rollout goes on past the
		// canary, which is still broken.
		r = fleetcert(t, ctx, "rotate", "-i", labelled, "--canary-selector", "ring=canary", "--waves", "1",
			"--max-failures", "1", "--health-timeout", "20s", "-o", "json")
		out = parseFleetReport(t, r.Stdout).outcomes()
		if out["wc"] == "done" || out["wa"] != "done" || out["wb"] != "done" || out["wd"] != "done" {
			t.Errorf("with --max-failures 1: outcomes %v\n%s", out, r)
		}

		// Fixed, the canary's unfinished run completes.
		if _, err := f.Exec(ctx, canary.Name, "rm -f /etc/k3semu/fault && systemctl restart --no-block "+canary.Unit); err != nil {
			t.Fatal(err)
		}
		if err := f.WaitReady(ctx, "wc"); err != nil {
			t.Fatal(err)
		}
		r = fleetcert(t, ctx, "rotate", "-i", inv, "--cluster", "wc", "-o", "json")
		if rep := r.report(t); r.Code != 0 || rep.Outcome != "done" || !rep.Resumed {
			t.Errorf("rerun after the fix: resumed=%v outcome=%s\n%s", rep.Resumed, rep.Outcome, r)
		}
	})

	t.Run("SIGTERM mid-wave", func(t *testing.T) {
		reportFile := filepath.Join(t.TempDir(), "report.json")
		var p *fcProcess
		sent := make(chan struct{})
		p = startFleetcert(t, ctx, func(l logLine, _ string) {
			// The first cluster finished: the second is starting or running.
			if l.Cluster == "wa" && l.Msg == "done" {
				select {
				case <-sent:
				default:
					close(sent)
					_ = p.cmd.Process.Signal(syscall.SIGTERM)
				}
			}
		}, "rotate", "-i", inv, "--waves", "1", "--order", "name", "--report", reportFile, "--log-format", "json", "-o", "json")
		r := p.wait(t)
		if r.Code != 143 {
			t.Fatalf("want exit 143 after SIGTERM: %s", r)
		}
		data, err := os.ReadFile(reportFile)
		if err != nil {
			t.Fatalf("no report after SIGTERM: %v", err)
		}
		rep := parseFleetReport(t, string(data))
		out := rep.outcomes()
		if out["wa"] != "done" || out["wd"] != "not-started" {
			t.Errorf("interrupted report: %v", out)
		}
		r = fleetcert(t, ctx, "rotate", "-i", inv, "-o", "json")
		if r.Code != 0 {
			t.Fatalf("rerun: %s", r)
		}
		for c, o := range parseFleetReport(t, r.Stdout).outcomes() {
			if o != "done" {
				t.Errorf("rerun: %s %s", c, o)
			}
		}
	})
}

// TestNodeNameOverride: an agent started with --node-name registers under
// that name, not its hostname; fleetcert learns it from the node's kubelet
// certificate, so preflight does not see an unlisted node and the agent's
// Ready gate finds it.
func TestNodeNameOverride(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 8*time.Minute)
	f := startRotFleet(t, ctx, harness.ClusterSpec{Name: "nn", Servers: []harness.NodeSpec{{}},
		Agents: []harness.NodeSpec{{ExtraArgs: []string{"--node-name", "edge-agent-7"}, ExpectUnready: true}}})
	server := f.Cluster("nn").Nodes()[0]
	deadline := time.Now().Add(3 * time.Minute)
	for {
		ready, err := f.ReadyNodes(ctx, server.Name)
		if err == nil && ready["edge-agent-7"] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent never registered as edge-agent-7: %v %v", ready, err)
		}
		time.Sleep(2 * time.Second)
	}
	r := fleetcert(t, ctx, "rotate-ca", "-i", f.InventoryPath(), "-o", "json", "--health-timeout", "2m")
	if r.Code != 0 {
		t.Fatalf("%s", r)
	}
	agent := f.Cluster("nn").Nodes()[1]
	if got := r.report(t).nodeOutcome(agent.Name); got != "restarted" {
		t.Errorf("agent outcome %q", got)
	}
}
