package orchestrator

import (
	"context"
	"strings"
	"testing"

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/k3s"
	"github.com/fleetcert/fleetcert/orchestrator/fleettest"
	"github.com/fleetcert/fleetcert/pki"
	"github.com/fleetcert/fleetcert/remote"
)

// openrcSpec: c0001 runs OpenRC on both nodes, c0002 mixes a systemd
// server with an OpenRC agent.
var openrcSpec = fleettest.Spec{Clusters: 2, Servers: 1, Agents: 1, OpenRC: []string{"c0001-s1", "c0001-a1", "c0002-a1"}}

// TestOpenRCOverFakeFleet: every operation runs on OpenRC nodes through
// rc-service, and afterwards no file under /etc holds the old hash.
func TestOpenRCOverFakeFleet(t *testing.T) {
	ctx := context.Background()
	fl, nodes, opts, next := fakeRotation(t, openrcSpec, 2)
	old := fl.Material.Hash
	target := pki.HashCA(next.Overlay(fl.Material.CAs)["server-ca.crt"])
	pids := map[string]int{}
	for _, n := range nodes {
		want := k3s.InitSystemd
		if n.Name != "c0002-s1" {
			want = k3s.InitOpenRC
		}
		if n.Facts.Init != want || n.Layout.Init != want || !n.Facts.Running() {
			t.Fatalf("%s: init %q (layout %q), state %q; want %s and running", n.Name, n.Facts.Init, n.Layout.Init, n.Facts.UnitState, want)
		}
		pids[n.Name] = n.Facts.MainPID
	}

	rep := RunFleet(ctx, fl.Dial, opts.op, oneWave(fl), opts.RunOptions)
	if u := fl.Unknown(); len(u) > 0 {
		t.Fatalf("scripts the fake does not know: %q", u)
	}
	if rep.Count(OutcomeDone) != 2 {
		for _, cr := range rep.Clusters {
			t.Logf("%s: %s %s", cr.Cluster, cr.Outcome, cr.Error)
		}
		t.Fatal("rotate-ca did not finish on both clusters")
	}
	for _, n := range nodes {
		fn := fl.Node(n.ID())
		for p, f := range fn.Files() {
			if strings.HasPrefix(p, "/etc/") && strings.Contains(string(f.Data), "K10"+old+"::") {
				t.Errorf("%s: %s still pins the old CA", n.Name, p)
			}
		}
		if n.Layout.OpenRC() {
			script, _ := fn.File(n.Layout.ServiceScript())
			env, _ := fn.File(n.Layout.OpenRCEnvFile())
			if !strings.Contains(string(script.Data)+string(env.Data), "K10"+target+"::") {
				t.Errorf("%s: neither command_args nor the env file pins the new CA", n.Name)
			}
		}
	}

	for _, op := range []Operation{&RotateSAKey{}, &RotateLeaf{}} {
		run := *opts.RunOptions
		run.RunID = NewRunID(run.now().Add(1))
		if rep := RunFleet(ctx, fl.Dial, op, oneWave(fl), &run); rep.Count(OutcomeDone) != 2 {
			for _, cr := range rep.Clusters {
				t.Logf("%s: %s %s", cr.Cluster, cr.Outcome, cr.Error)
			}
			t.Fatalf("%s did not finish on both clusters", op.Command())
		}
	}
	after := Connect(ctx, fl.Nodes(), fl.Dial, 2)
	for _, n := range after {
		if n.Layout.OpenRC() && (n.Facts.MainPID == 0 || n.Facts.MainPID == pids[n.Name]) {
			t.Errorf("%s: k3s PID %d after restarts, %d before", n.Name, n.Facts.MainPID, pids[n.Name])
		}
	}
	for _, cc := range Check(ctx, after, CheckOptions{}) {
		if len(cc.Unreachable) > 0 || cc.CAHash != target {
			t.Errorf("check %s: %d unreachable, serves %s, want %s", cc.Name, len(cc.Unreachable), short(cc.CAHash), short(target))
		}
		for _, nc := range cc.Nodes {
			if nc.TokenCAMatch != nil && !*nc.TokenCAMatch {
				t.Errorf("check %s: token does not pin the served CA", nc.Name)
			}
		}
	}
}

// TestOpenRCAgentOnOldCAFailsFast: an OpenRC agent whose token goes back
// to the old CA before its restart (configuration management undoing the
// rewrite) fails its gate at once, naming the line of its log file.
func TestOpenRCAgentOnOldCAFailsFast(t *testing.T) {
	ctx := context.Background()
	fl, _, opts, _ := fakeRotation(t, fleettest.Spec{Clusters: 1, Servers: 1, Agents: 1, OpenRC: []string{"c0001-s1", "c0001-a1"}}, 2)
	agent := fl.Node("c0001/c0001-a1")
	l := k3s.Layout{Role: k3s.RoleAgent, Init: k3s.InitOpenRC, Unit: inventory.DefaultAgentService}
	env, _ := agent.File(l.OpenRCEnvFile())
	agent.BeforeRun = func(_ context.Context, script string) *remote.Result {
		if strings.HasSuffix(script, l.RestartCmd()) {
			agent.Put(l.OpenRCEnvFile(), env.Data, 0o600)
		}
		return nil
	}
	rep := RunFleet(ctx, fl.Dial, opts.op, oneWave(fl), opts.RunOptions)
	cr := rep.Clusters[0]
	var got *NodeReport
	for _, nr := range cr.Nodes {
		if nr.Node == "c0001-a1" {
			got = &nr
		}
	}
	if cr.Outcome != OutcomeFailed || got == nil || got.Outcome != "failed" || !strings.Contains(got.Error, k3s.TokenMismatchLog) {
		t.Fatalf("cluster %s (%s); agent: %+v", cr.Outcome, cr.Error, got)
	}
}
