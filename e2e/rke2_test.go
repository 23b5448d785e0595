package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/fleetcert/fleetcert/e2e/harness"
)

// RKE2 (issue 17): the demo's RKE2 cluster delta, beside a one-server k3s
// cluster so that one inventory holds both products. The fleetcert runs
// here need fleetcert's `product: rke2`.

// TestRKE2Delta: on delta, rotate-ca exits 0 and leaves no file under /etc
// holding the old hash; rotate-sa-key over an inventory mixing delta and a
// k3s cluster is one rollout over both; rotate and check exit 0.
func TestRKE2Delta(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 12*time.Minute)
	f := startRotFleet(t, ctx, harness.DemoDelta(), harness.ClusterSpec{
		Name:    "kilo",
		Servers: []harness.NodeSpec{{Token: harness.SecureToken, TokenIn: []harness.TokenPlace{harness.InConfig}}},
	})
	delta := f.Cluster("delta")
	if delta.Product() != harness.ProductRKE2 {
		t.Fatalf("delta is %q", delta.Product())
	}
	oldHash := clusterHash(t, ctx, f, "delta")
	assertTokensPin(t, ctx, f, "delta", oldHash)

	res := fleetcert(t, ctx, "rotate-ca", "-i", f.InventoryPath(), "--cluster", "delta", "-o", "json", "--health-timeout", "3m")
	if res.Code != 0 {
		t.Fatalf("rotate-ca on delta:\n%s", res)
	}
	newHash := clusterHash(t, ctx, f, "delta")
	if newHash == oldHash {
		t.Fatal("delta's served CA hash did not change")
	}
	for _, n := range delta.Nodes() {
		r, err := f.Exec(ctx, n.Name, "grep -rl "+oldHash+" /etc || true")
		if err != nil {
			t.Fatal(err)
		}
		if out := strings.TrimSpace(r.Stdout); out != "" {
			t.Errorf("%s: files under /etc still hold the old hash:\n%s", n.Name, out)
		}
	}
	assertTokensPin(t, ctx, f, "delta", newHash)
	assertAllReady(t, ctx, f, "delta")
	assertNoMismatchLogged(t, ctx, f, delta.Nodes()...)

	// One rollout over both products.
	kiloHash := clusterHash(t, ctx, f, "kilo")
	res = fleetcert(t, ctx, "rotate-sa-key", "-i", f.InventoryPath(), "-o", "json", "--health-timeout", "3m")
	if res.Code != 0 {
		t.Fatalf("rotate-sa-key over delta and kilo:\n%s", res)
	}
	var rep rotateReport
	if err := json.Unmarshal([]byte(res.Stdout), &rep); err != nil {
		t.Fatalf("report: %v\n%s", err, res)
	}
	if len(rep.Clusters) != 2 {
		t.Fatalf("one run over an inventory with delta and kilo reported %d clusters\n%s", len(rep.Clusters), res)
	}
	for _, c := range rep.Clusters {
		for _, n := range c.Nodes {
			if n.Role == "server" && n.Outcome == "untouched" {
				t.Errorf("%s/%s: server untouched by rotate-sa-key", c.Cluster, n.Node)
			}
		}
	}
	if clusterHash(t, ctx, f, "kilo") != kiloHash || clusterHash(t, ctx, f, "delta") != newHash {
		t.Error("rotate-sa-key changed a CA hash")
	}
	assertAllReady(t, ctx, f, "kilo")

	for _, args := range [][]string{
		{"rotate", "-i", f.InventoryPath(), "--cluster", "delta", "-o", "json", "--health-timeout", "3m"},
		{"check", "-i", f.InventoryPath(), "--cluster", "delta"},
	} {
		if res := fleetcert(t, ctx, args...); res.Code != 0 {
			t.Errorf("%s", res)
		}
	}
	assertAllReady(t, ctx, f, "delta")
	// rke2's own certificate check sees what fleetcert sees.
	chkAgrees(t, chkJSON(t, ctx, f, 0, "--cluster", "delta", "--cross-check"))

	// Retiring the old roots works on RKE2 as on k3s: the hash stays, every
	// node comes back on the completed bundle, and status has nothing left.
	for _, args := range [][]string{
		{"rotate-ca", "--complete", "--min-soak", "0", "-i", f.InventoryPath(), "--cluster", "delta", "-o", "json", "--health-timeout", "3m"},
		{"status", "-i", f.InventoryPath(), "--cluster", "delta"},
	} {
		if res := fleetcert(t, ctx, args...); res.Code != 0 {
			t.Errorf("%s", res)
		}
	}
	if h := clusterHash(t, ctx, f, "delta"); h != newHash {
		t.Errorf("completing changed delta's hash: %s, want %s", h, newHash)
	}
	assertAllReady(t, ctx, f, "delta")
}

// TestRKE2AgentOnOldCAFailsFast: an RKE2 agent whose token goes back to
// the old CA hash at its restart (a unit drop-in restores the old
// config.yaml before every start, as a config-management run would) logs
// the hash mismatch at once; its gate must fail then, not at the health
// timeout.
func TestRKE2AgentOnOldCAFailsFast(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 10*time.Minute)
	spec := harness.DemoDelta()
	spec.Name = "stale"
	f := startRotFleet(t, ctx, spec)
	a := f.Cluster("stale").Agents[0]
	cfg, err := f.ReadFile(ctx, a.Name, "/etc/rancher/rke2/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.WriteFile(ctx, a.Name, "/root/rke2-config.saved", cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	dropIn := "[Service]\nExecStartPre=/bin/cp /root/rke2-config.saved /etc/rancher/rke2/config.yaml\n"
	if err := f.WriteFile(ctx, a.Name, "/etc/systemd/system/"+a.Unit+".service.d/90-restore.conf", []byte(dropIn), 0o644); err != nil {
		t.Fatal(err)
	}
	if r, err := f.Exec(ctx, a.Name, "systemctl daemon-reload"); err != nil || r.ExitCode != 0 {
		t.Fatalf("daemon-reload: %v %+v", err, r)
	}
	const timeout = 5 * time.Minute
	start := time.Now()
	res := fleetcert(t, ctx, "rotate-ca", "-i", f.InventoryPath(), "-o", "json", "--health-timeout", timeout.String())
	took := time.Since(start)
	if res.Code != 1 {
		t.Fatalf("want exit 1 for an agent left on the old CA\n%s", res)
	}
	if o := res.report(t).nodeOutcome(a.Name); o != "failed" {
		t.Errorf("%s: outcome %q, want failed\n%s", a.Name, o, res)
	}
	if took > timeout/2 {
		t.Errorf("the run took %s: the mismatch must fail the agent's gate fast, not at the %s health timeout", took, timeout)
	}
	logs, err := f.Logs(ctx, a.Name)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs, "token CA hash does not match") {
		t.Errorf("%s never logged the mismatch", a.Name)
	}
}
