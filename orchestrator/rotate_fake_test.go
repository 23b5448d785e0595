package orchestrator

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"path"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/k3s"
	"github.com/fleetcert/fleetcert/orchestrator/fleettest"
	"github.com/fleetcert/fleetcert/orchestrator/rollout"
	"github.com/fleetcert/fleetcert/pki"
)

// crossSigned is the fake fleet's next CA material, cross-signed once per
// test binary: every fake cluster starts from the same CAs, so one set
// serves them all.
var crossSigned = sync.OnceValues(func() (pki.CASet, error) {
	m, err := fleettest.Default()
	if err != nil {
		return nil, err
	}
	return pki.Env{}.CrossSign(m.CAs)
})

// fakeRotation sets up a fake fleet, connects to it and returns the nodes
// and rotate-ca options that hand out the material made once.
func fakeRotation(tb testing.TB, spec fleettest.Spec, concurrency int) (*fleettest.Fleet, []*Node, *fakeRun, pki.CASet) {
	tb.Helper()
	m, err := fleettest.Default()
	if err != nil {
		tb.Fatal(err)
	}
	opts, next := fakeOptions(tb, concurrency)
	fl := fleettest.New(m, spec)
	nodes := Connect(context.Background(), fl.Nodes(), fl.Dial, concurrency)
	for _, n := range nodes {
		if n.Err != nil {
			tb.Fatalf("%s: %v", n.ID(), n.Err)
		}
	}
	return fl, nodes, opts, next
}

// fakeRun is a rotate-ca and the options of its run.
type fakeRun struct {
	*RunOptions
	op *RotateCA
}

// fakeOptions are rotate-ca and its run's options for a fake fleet: gates
// polled every millisecond (they pass at once), and RotateCA.Material
// handing out the cross-signed set made once, which is returned too.
func fakeOptions(tb testing.TB, concurrency int) (*fakeRun, pki.CASet) {
	tb.Helper()
	next, err := crossSigned()
	if err != nil {
		tb.Fatal(err)
	}
	run := &RunOptions{RunID: NewRunID(time.Now()),
		HealthTimeout: 10 * time.Second, PollInterval: time.Millisecond, Concurrency: concurrency}
	op := &RotateCA{Material: func(mode Mode, current pki.CASet) (pki.CASet, error) {
		if mode != ModeCrossSign {
			return nil, fmt.Errorf("fake fleet: want mode %s, got %s", ModeCrossSign, mode)
		}
		return next, nil
	}}
	return &fakeRun{RunOptions: run, op: op}, next
}

func oneWave(fl *fleettest.Fleet) rollout.Plan {
	return rollout.Plan{Waves: [][]inventory.Cluster{fl.Inventory}}
}

func TestRotateCAOverFakeFleet(t *testing.T) {
	for _, spec := range []fleettest.Spec{
		{Clusters: 3, Servers: 1, Agents: 2},
		{Clusters: 2, Servers: 3},
	} {
		t.Run(fmt.Sprintf("%ds%da", spec.Servers, spec.Agents), func(t *testing.T) {
			ctx := context.Background()
			fl, nodes, opts, next := fakeRotation(t, spec, 4)
			rec := &Recorder{}
			opts.Sink = rec
			m := fl.Material
			target := pki.HashCA(next.Overlay(m.CAs)["server-ca.crt"])
			if target == m.Hash {
				t.Fatal("cross-signed material pins the old hash")
			}

			rep := RunFleet(ctx, fl.Dial, opts.op, oneWave(fl), opts.RunOptions)

			if u := fl.Unknown(); len(u) > 0 {
				t.Fatalf("scripts the fake does not know: %q", u)
			}
			if got := rep.Count(OutcomeDone); got != spec.Clusters {
				for _, cr := range rep.Clusters {
					t.Logf("%s: %s %s", cr.Cluster, cr.Outcome, cr.Error)
				}
				t.Fatalf("%d of %d clusters done", got, spec.Clusters)
			}
			for _, cr := range rep.Clusters {
				if cr.Mode != ModeCrossSign || cr.OldHash != m.Hash || cr.TargetHash != target {
					t.Errorf("%s: mode %s, hash %s -> %s; want %s -> %s", cr.Cluster, cr.Mode, short(cr.OldHash), short(cr.TargetHash), short(m.Hash), short(target))
				}
				if len(cr.Staged) != len(next) {
					t.Errorf("%s: staged %v, want all %d cross-signed files", cr.Cluster, cr.Staged, len(next))
				}
				for _, nr := range cr.Nodes {
					if nr.Outcome != "restarted" {
						t.Errorf("%s/%s: outcome %s %s", cr.Cluster, nr.Node, nr.Outcome, nr.Error)
					}
					// Agents included: every restarted node's time is measured.
					if nr.Duration <= 0 {
						t.Errorf("%s/%s (%s): duration %v", cr.Cluster, nr.Node, nr.Role, nr.Duration)
					}
				}
				wantSnap := 0
				if spec.Servers > 1 {
					wantSnap = 1
				}
				if got := fleetCluster(fl, cr.Cluster).Snapshots(); len(got) != wantSnap {
					t.Errorf("%s: etcd snapshots %v, want %d", cr.Cluster, got, wantSnap)
				}
			}
			for _, n := range nodes {
				checkRotatedNode(t, fl.Node(n.ID()), n, opts.RunID, m.Hash, target, next)
			}
			var gates int
			for _, e := range rec.Events() {
				if e.Kind == EventGate {
					gates++
				}
			}
			// servers: 5 gates each; agents: 2.
			if want := spec.Clusters * (5*spec.Servers + 2*spec.Agents); gates != want {
				t.Errorf("%d gates passed, want %d", gates, want)
			}
		})
	}
}

// TestRotateCAFileChangedBeforeWrite: a token file that changes between
// facts and the rewrite (configuration management adding a line) is never
// overwritten blind: the write is refused on the node, fleetcert reads the
// node again, plans anew and rewrites the new content, keeping the edit.
func TestRotateCAFileChangedBeforeWrite(t *testing.T) {
	ctx := context.Background()
	fl, nodes, opts, next := fakeRotation(t, fleettest.Spec{Clusters: 1, Servers: 1, Agents: 1}, 2)
	target := pki.HashCA(next.Overlay(fl.Material.CAs)["server-ca.crt"])
	var agent *Node
	for _, n := range nodes {
		if n.Role == inventory.Agent {
			agent = n
		}
	}
	fa := fl.Node(agent.ID())
	env := agent.Layout.EnvFile()
	edited := false
	fa.BeforeWrite = func(p string) {
		if p == env && !edited {
			edited = true
			f, _ := fa.File(p)
			fa.Put(p, append(bytes.Clone(f.Data), "# managed by cfgmgmt\n"...), f.Mode)
		}
	}
	rec := &Recorder{}
	opts.Sink = rec
	rep := RunFleet(ctx, fl.Dial, opts.op, oneWave(fl), opts.RunOptions)
	if rep.Count(OutcomeDone) != 1 {
		t.Fatalf("cluster not done: %+v", rep.Clusters[0])
	}
	if !edited {
		t.Fatal("the agent's env file was never written")
	}
	f, _ := fa.File(env)
	if !strings.Contains(string(f.Data), "# managed by cfgmgmt\n") || !strings.Contains(string(f.Data), "K10"+target+"::") {
		t.Errorf("env file lost the concurrent edit or the new hash: %q", redactTokens(f.Data))
	}
	warned := false
	for _, e := range rec.Events() {
		warned = warned || strings.Contains(e.Msg, "changed since it was read")
	}
	if !warned {
		t.Error("the refused write was not reported")
	}
}

// tokenSecret is a secure token up to its secret (after the user and ':',
// or the bootstrap id and '.'), and the secret.
var tokenSecret = regexp.MustCompile(`(K10[0-9a-f]*::[^\s'":.]+[:.])[^\s'"]+`)

// redactTokens is a file with the secret of every token in it hidden, for
// failure messages.
func redactTokens(data []byte) string { return tokenSecret.ReplaceAllString(string(data), "${1}****") }

func fleetCluster(fl *fleettest.Fleet, name string) *fleettest.Cluster {
	for _, c := range fl.Clusters {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// checkRotatedNode looks at a fake node after a rotation: its token file
// pins the target, a server holds the new CA files and a rewritten
// server/token, an agent downloaded the new bundle; the primary recorded
// the run as finished and released its lock and staging directory.
func checkRotatedNode(t *testing.T, fn *fleettest.Node, n *Node, runID, fleetHash, target string, next pki.CASet) {
	t.Helper()
	l := n.Layout
	if b, ok := fn.File(l.BackupDir(runID) + l.EnvFile()); !ok || !strings.Contains(string(b.Data), "K10"+fleetHash+"::") {
		t.Errorf("%s: no backup of %s holding the old token", n.ID(), l.EnvFile())
	}
	env, ok := fn.File(l.EnvFile())
	if !ok || !strings.Contains(string(env.Data), "K10"+target+"::server:") {
		t.Errorf("%s: %s does not pin the target: %q", n.ID(), l.EnvFile(), redactTokens(env.Data))
	}
	if n.Role == inventory.Agent {
		ca, _ := fn.File(l.AgentServerCA())
		if got := pki.HashCA(ca.Data); got != target {
			t.Errorf("%s: agent/server-ca.crt hash %s, want %s", n.ID(), short(got), short(target))
		}
		return
	}
	tok, _ := fn.File(l.ServerToken())
	if pt, err := pki.ParseToken(strings.TrimSpace(string(tok.Data))); err != nil || pt.CAHash != target {
		t.Errorf("%s: server/token does not pin the target (%v)", n.ID(), err)
	}
	for name, data := range next {
		f, _ := fn.File(path.Join(l.ServerTLSDir(), name))
		if !bytes.Equal(f.Data, data) {
			t.Errorf("%s: server/tls/%s is not the new material", n.ID(), name)
		}
	}
	if !n.Primary {
		return
	}
	dir := l.FleetcertDir()
	last, ok := fn.File(path.Join(dir, lastRunFile))
	if !ok {
		t.Fatalf("%s: no %s", n.ID(), lastRunFile)
	}
	for _, want := range []string{`"outcome": "done"`, `"targetHash": "` + target + `"`, `"loaded": true`} {
		if !strings.Contains(string(last.Data), want) {
			t.Errorf("%s: %s lacks %s:\n%s", n.ID(), lastRunFile, want, last.Data)
		}
	}
	for _, gone := range []string{path.Join(dir, runStateFile), path.Join(dir, "lock")} {
		if _, ok := fn.File(gone); ok {
			t.Errorf("%s: %s left behind", n.ID(), gone)
		}
	}
	for p := range fn.Files() {
		if strings.HasPrefix(p, path.Join(dir, "stage-")) {
			t.Errorf("%s: staging file %s left behind", n.ID(), p)
		}
	}
}

func TestRotateCADryRunOverFakeFleetChangesNothing(t *testing.T) {
	ctx := context.Background()
	fl, _, opts, _ := fakeRotation(t, fleettest.Spec{Clusters: 2, Servers: 3, Agents: 1}, 4)
	opts.DryRun = true
	before := map[string]map[string]fleettest.File{}
	for _, n := range fl.Nodes() {
		before[n.ID()] = fl.Node(n.ID()).Files()
	}

	rep := RunFleet(ctx, fl.Dial, opts.op, oneWave(fl), opts.RunOptions)

	if u := fl.Unknown(); len(u) > 0 {
		t.Fatalf("scripts the fake does not know: %q", u)
	}
	for _, cr := range rep.Clusters {
		if cr.Outcome != OutcomePlanned {
			t.Fatalf("%s: %s %s", cr.Cluster, cr.Outcome, cr.Error)
		}
		var restarts, rewrites int
		for _, c := range cr.Changes {
			switch {
			case strings.HasPrefix(c.What, "restart "):
				restarts++
			case strings.HasPrefix(c.What, "rewrite "):
				rewrites++
			}
		}
		if len(cr.Changes) == 0 || restarts != 4 || rewrites != 4 {
			t.Errorf("%s: %d planned changes, %d restarts, %d token rewrites (want 4 each): %v", cr.Cluster, len(cr.Changes), restarts, rewrites, cr.Changes)
		}
	}
	for _, n := range fl.Nodes() {
		after := fl.Node(n.ID()).Files()
		if len(after) != len(before[n.ID()]) {
			t.Errorf("%s: %d files before, %d after", n.ID(), len(before[n.ID()]), len(after))
		}
		for p, f := range before[n.ID()] {
			g, ok := after[p]
			if !ok || !bytes.Equal(g.Data, f.Data) || g.Mode != f.Mode || !g.MTime.Equal(f.MTime) {
				t.Errorf("%s: %s changed in a dry run", n.ID(), p)
			}
		}
		if s := fleetCluster(fl, n.Cluster).Snapshots(); len(s) > 0 {
			t.Errorf("%s: snapshot taken in a dry run: %v", n.Cluster, s)
		}
	}
}

// TestFakeNodeRefusesTokenMismatch: the fake holds k3s to its rule, so a
// rotation that forgot a token would fail its gate rather than pass: an
// agent restarted with a token that pins another CA than its server serves
// logs the mismatch and never downloads the bundle.
func TestFakeNodeRefusesTokenMismatch(t *testing.T) {
	ctx := context.Background()
	fl, nodes, opts, next := fakeRotation(t, fleettest.Spec{Clusters: 1, Servers: 1, Agents: 1}, 1)
	var server, agent *Node
	for _, n := range nodes {
		if n.Role == inventory.Server {
			server = n
		} else {
			agent = n
		}
	}
	// Load and restart the server the way a rotation does, then restart
	// the agent without rewriting its token.
	dir := server.Layout.StageDir(opts.RunID)
	if err := stageFiles(ctx, server, dir, next); err != nil {
		t.Fatal(err)
	}
	if err := loadCA(ctx, server, dir, false); err != nil {
		t.Fatal(err)
	}
	target := pki.HashCA(next["server-ca.crt"])
	files, err := planTokens(server, target, []string{fl.Material.Hash})
	if err != nil {
		t.Fatal(err)
	}
	for _, fr := range files {
		if fr.Changed() {
			if err := server.Conn.WriteFile(ctx, fr.Path, fr.New, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := restartUnit(ctx, server); err != nil {
		t.Fatal(err)
	}
	if h, err := serverTokenHash(ctx, server); err != nil || h != target {
		t.Fatalf("server/token after restart: %s %v", short(h), err)
	}
	t0, err := restartUnit(ctx, agent)
	if err != nil {
		t.Fatal(err)
	}
	if got := tokenMismatchSince(ctx, agent, t0); !strings.Contains(got, k3s.TokenMismatchLog) {
		t.Fatalf("agent journal: %q", got)
	}
	ca, _ := fl.Node(agent.ID()).File(agent.Layout.AgentServerCA())
	if pki.HashCA(ca.Data) != fl.Material.Hash {
		t.Fatal("an agent whose token pins the old CA downloaded the new one")
	}
	res, err := agent.Conn.Run(ctx, "k3s certificate rotate --service kubelet", nil)
	if err != nil || res.ExitCode != 127 || len(fl.Unknown()) != 1 {
		t.Fatalf("unknown script: exit %d, %v, recorded %q", res.ExitCode, err, fl.Unknown())
	}
}

// TestRotateCAClockSkew: a node whose clock is behind by more than new
// certificates are backdated (1 h) refuses its cluster before anything
// changes, naming the node and the offset; 10 minutes off is a warning and
// the run goes on.
func TestRotateCAClockSkew(t *testing.T) {
	for _, tc := range []struct {
		name    string
		offset  time.Duration
		outcome string
		want    string
	}{
		// The node reads its clock in whole seconds: the offset seen is
		// within a second of the one set.
		{"2h behind", -2 * time.Hour, OutcomeRefused, "behind the controller's, more than the 1h0m0s new certificates are backdated"},
		{"10m ahead", 10 * time.Minute, OutcomeDone, "ahead of the controller's; fix its time sync (NTP)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fl, nodes, opts, _ := fakeRotation(t, fleettest.Spec{Clusters: 1, Servers: 1, Agents: 1}, 2)
			var agent *Node
			for _, n := range nodes {
				if n.Role == inventory.Agent {
					agent = n
				}
			}
			fl.Node(agent.ID()).ClockOffset = tc.offset
			before := fl.Node(agent.ID()).Files()
			rep := RunFleet(context.Background(), fl.Dial, opts.op, oneWave(fl), opts.RunOptions)
			cr := rep.Clusters[0]
			if cr.Outcome != tc.outcome {
				t.Fatalf("outcome %s (%s), want %s", cr.Outcome, cr.Error, tc.outcome)
			}
			said := cr.Error + strings.Join(cr.Warnings, "\n")
			if !strings.Contains(said, agent.Name+": its clock is ") || !strings.Contains(said, tc.want) {
				t.Errorf("report does not say %q about %s:\n%s", tc.want, agent.Name, said)
			}
			if tc.outcome == OutcomeRefused && !maps.EqualFunc(before, fl.Node(agent.ID()).Files(), func(a, b fleettest.File) bool { return bytes.Equal(a.Data, b.Data) }) {
				t.Error("a refused cluster's node changed")
			}
		})
	}
}
