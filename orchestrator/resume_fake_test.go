package orchestrator

import (
	"context"
	"encoding/json"
	"path"
	"strings"
	"testing"

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/k3s"
	"github.com/fleetcert/fleetcert/orchestrator/fleettest"
)

// writeRunState puts an unfinished run's state on a fake cluster's primary.
func writeRunState(t *testing.T, fl *fleettest.Fleet, state string) *fleettest.Node {
	t.Helper()
	primary := fl.Node(fl.Nodes()[0].ID())
	dir := k3s.Layout{Role: k3s.RoleServer}.FleetcertDir()
	primary.MkdirAll(dir)
	if err := primary.WriteFile(context.Background(), dir+"/run.json", []byte(state), 0o600); err != nil {
		t.Fatal(err)
	}
	return primary
}

// TestAbandonRefusedOnceLoaded: --abandon must not drop a run whose new CA
// material is already in the datastore (any server restart switches to it).
func TestAbandonRefusedOnceLoaded(t *testing.T) {
	fl, _, opts, _ := fakeRotation(t, fleettest.Spec{Clusters: 1, Servers: 1, Agents: 1}, 1)
	writeRunState(t, fl, `{"runId":"r-old","command":"rotate-ca","mode":"cross-sign","loaded":true,"targetHash":"`+strings.Repeat("ab", 32)+`","nodes":{}}`)
	opts.Abandon = true
	rep := RunFleet(context.Background(), fl.Dial, opts.op, oneWave(fl), opts.RunOptions)
	cr := rep.Clusters[0]
	if cr.Outcome != OutcomeRefused || !strings.Contains(cr.Error, "already loaded new CA material") {
		t.Fatalf("outcome %s: %s", cr.Outcome, cr.Error)
	}
}

// TestAbandonDropsAnUnloadedRun: an unfinished run that never loaded its
// material is closed as abandoned, its staging directory removed, and no
// node is touched.
func TestAbandonDropsAnUnloadedRun(t *testing.T) {
	fl, _, opts, _ := fakeRotation(t, fleettest.Spec{Clusters: 1, Servers: 1, Agents: 1}, 1)
	stage := k3s.Layout{Role: k3s.RoleServer}.StageDir("r-old")
	primary := writeRunState(t, fl, `{"runId":"r-old","command":"rotate-ca","mode":"cross-sign","stageDir":"`+stage+`","nodes":{}}`)
	primary.MkdirAll(stage + "/tls")
	if err := primary.WriteFile(context.Background(), stage+"/tls/server-ca.key", []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	opts.Abandon = true
	rep := RunFleet(context.Background(), fl.Dial, opts.op, oneWave(fl), opts.RunOptions)
	if cr := rep.Clusters[0]; cr.Outcome != OutcomeAbandoned {
		t.Fatalf("outcome %s: %s", cr.Outcome, cr.Error)
	}
	if _, ok := primary.File(stage + "/tls/server-ca.key"); ok {
		t.Error("the abandoned run's staged CA key is still on the node")
	}
	last, ok := primary.File(k3s.Layout{Role: k3s.RoleServer}.FleetcertDir() + "/last-run.json")
	if !ok || !strings.Contains(string(last.Data), `"outcome": "abandoned"`) {
		t.Errorf("last run: %q", last.Data)
	}
	for _, n := range rep.Clusters[0].Nodes {
		if n.Outcome != "untouched" {
			t.Errorf("%s: %s", n.Node, n.Outcome)
		}
	}
}

// TestRewriteRecordedBeforeWrite: when a node's token files are written,
// the run state on the primary already says the run rewrites them. A
// connection lost after the write (before its daemon-reload) then leaves a
// change the rerun can account for as its own.
func TestRewriteRecordedBeforeWrite(t *testing.T) {
	fl, nodes, opts, _ := fakeRotation(t, fleettest.Spec{Clusters: 1, Servers: 1, Agents: 1}, 1)
	var primary, agent *Node
	for _, n := range nodes {
		if n.Role == inventory.Agent {
			agent = n
		} else {
			primary = n
		}
	}
	statePath := path.Join(primary.Layout.FleetcertDir(), runStateFile)
	var steps []NodeStep
	fl.Node(agent.ID()).BeforeWrite = func(string) {
		f, ok := fl.Node(primary.ID()).File(statePath)
		var s RunState
		if ok && json.Unmarshal(f.Data, &s) == nil {
			steps = append(steps, s.Nodes[agent.Name])
		} else {
			steps = append(steps, "no run state")
		}
	}
	rep := RunFleet(context.Background(), fl.Dial, opts.op, oneWave(fl), opts.RunOptions)
	if rep.Count(OutcomeDone) != 1 {
		t.Fatalf("cluster not done: %+v", rep.Clusters[0])
	}
	if len(steps) == 0 {
		t.Fatal("the agent's token files were never written")
	}
	for _, s := range steps {
		if s != StepRewritten {
			t.Errorf("at a token write the run state said %q for the agent, want %q", s, StepRewritten)
		}
	}
}
