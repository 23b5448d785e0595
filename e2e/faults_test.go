package e2e

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fleetcert/fleetcert/e2e/harness"
)

// The fault matrix: a rotation interrupted at an unlucky moment must leave
// every node consistent and the run resumable. Each case ends with a rerun
// that completes, then `check` exit 0 with every token pinning the CA the
// servers serve.

// killPoint is where the controller dies: the first log line for which
// reached reports true, given every line before it.
type killPoint struct {
	name    string
	reached func(seen []logLine, l logLine) bool
}

// afterPhase is reached by the first phase event after phase ended: the
// controller dies right after that phase, before the next one acts.
func afterPhase(phase string) killPoint {
	return killPoint{"after " + phase, func(seen []logLine, l logLine) bool {
		return isPhase(l) && l.Msg != phase && slices.ContainsFunc(seen, func(s logLine) bool { return isPhase(s) && s.Msg == phase })
	}}
}

// afterNode is reached by the first line about next in phase: node, the
// one before it, has passed every gate.
func afterNode(phase, node, next string) killPoint {
	return killPoint{"after " + node, func(_ []logLine, l logLine) bool {
		return l.Node == next && l.Phase == phase
	}}
}

func isPhase(l logLine) bool { return l.Node == "" && l.Phase != "" && l.Msg == l.Phase }

// runKilled runs args and SIGKILLs the controller at kp; it fails the test
// when the run ended before reaching it.
func runKilled(t *testing.T, ctx context.Context, kp killPoint, args ...string) {
	t.Helper()
	var p *fcProcess
	var mu sync.Mutex
	var seen []logLine
	killed := make(chan struct{})
	var once sync.Once
	p = startFleetcert(t, ctx, func(l logLine, _ string) {
		mu.Lock()
		defer mu.Unlock()
		if kp.reached(seen, l) {
			once.Do(func() {
				_ = p.cmd.Process.Signal(syscall.SIGKILL)
				close(killed)
			})
		}
		seen = append(seen, l)
	}, args...)
	res := p.wait(t)
	select {
	case <-killed:
	default:
		t.Fatalf("%s: the run ended before the point to kill it:\n%s", kp.name, res)
	}
}

// assertRecovered reruns args to completion, then checks the cluster as
// an operator would: check exits 0 and every token pins what the servers
// serve.
func assertRecovered(t *testing.T, ctx context.Context, f *harness.Fleet, cluster string, args ...string) {
	t.Helper()
	res := fleetcert(t, ctx, args...)
	if res.Code != 0 {
		t.Fatalf("the rerun failed:\n%s", res)
	}
	if code, out, stderr := chkRun(t, ctx, f); code != 0 {
		t.Errorf("check after the rerun exited %d:\n%s\n%s", code, out, stderr)
	}
	assertTokensPin(t, ctx, f, cluster, clusterHash(t, ctx, f, cluster))
	assertAllReady(t, ctx, f, cluster)
}

// TestFaultKillAfterEveryPhase: the controller SIGKILLed right after each
// phase of rotate-ca (preflight, material, lock, backup, etcd snapshot,
// load, each server, each agent batch, verify, cleanup); every time, a
// rerun of the same command completes and the cluster checks clean.
func TestFaultKillAfterEveryPhase(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 20*time.Minute)
	f := startRotFleet(t, ctx, harness.ClusterSpec{
		Name:    "kill",
		Servers: []harness.NodeSpec{{Token: harness.SecureToken, TokenIn: []harness.TokenPlace{harness.InEnvFile}}, {TokenIn: []harness.TokenPlace{harness.InExecStart}}},
		Agents:  []harness.NodeSpec{{TokenIn: []harness.TokenPlace{harness.InConfig}}, {TokenIn: []harness.TokenPlace{harness.InEnvFile}}},
	})
	c := f.Cluster("kill")
	s1, s2, a1, a2 := c.Servers[0], c.Servers[1], c.Agents[0], c.Agents[1]
	args := []string{"rotate-ca", "-i", f.InventoryPath(), "-o", "json", "--log-format", "json", "--health-timeout", "3m", "--agent-batch", "1"}
	for _, kp := range []killPoint{
		afterPhase("preflight"),
		afterPhase("material"),
		afterPhase("lock"),
		afterPhase("backup"),
		afterPhase("etcd-snapshot"),
		afterPhase("stage+load"),
		afterNode("servers", s1.Name, s2.Name),
		afterPhase("servers"),
		afterNode("agents", a1.Name, a2.Name),
		afterPhase("agents"),
		afterPhase("verify"),
		{"after cleanup", func(_ []logLine, l logLine) bool { return l.Node == "" && l.Phase == "" && l.Msg == "done" }},
	} {
		t.Run(strings.ReplaceAll(kp.name, " ", "-"), func(t *testing.T) {
			runKilled(t, ctx, kp, args...)
			assertRecovered(t, ctx, f, "kill", args...)
		})
	}
}

// TestFaultRebootDuringAgents: an agent's machine reboots (its container
// restarts) right as the agents phase restarts it. Whatever the run makes
// of it, a rerun completes.
func TestFaultRebootDuringAgents(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 10*time.Minute)
	f := startRotFleet(t, ctx, harness.ClusterSpec{
		Name:    "boot",
		Servers: []harness.NodeSpec{{Token: harness.SecureToken, TokenIn: []harness.TokenPlace{harness.InEnvFile}}},
		Agents:  []harness.NodeSpec{{TokenIn: []harness.TokenPlace{harness.InEnvFile}}, {TokenIn: []harness.TokenPlace{harness.InConfig}}},
	})
	a1 := f.Cluster("boot").Agents[0]
	args := []string{"rotate-ca", "-i", f.InventoryPath(), "-o", "json", "--log-format", "json", "--health-timeout", "3m", "--agent-batch", "1"}
	rebooted := make(chan error, 1)
	var once sync.Once
	p := startFleetcert(t, ctx, func(l logLine, _ string) {
		if l.Node == a1.Name && l.Phase == "agents" && strings.HasPrefix(l.Msg, "restart ") {
			once.Do(func() { go func() { rebooted <- f.RestartNode(ctx, a1.Name) }() })
		}
	}, args...)
	res := p.wait(t)
	select {
	case err := <-rebooted:
		if err != nil {
			t.Fatalf("reboot %s: %v", a1.Name, err)
		}
	case <-time.After(3 * time.Minute):
		t.Fatalf("the run never restarted %s, or its reboot never ended:\n%s", a1.Name, res)
	}
	t.Logf("the run with the reboot exited %d", res.Code)
	if err := f.WaitReady(ctx, "boot"); err != nil {
		t.Fatal(err)
	}
	assertRecovered(t, ctx, f, "boot", args...)
}

// TestFaultPrimaryDownOnRerun: the controller dies after the first server,
// and the primary is down when the rerun starts: the rerun refuses, naming
// it, with nothing changed; once it is back, the rerun completes.
func TestFaultPrimaryDownOnRerun(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 10*time.Minute)
	f := startRotFleet(t, ctx, harness.ClusterSpec{
		Name:    "down",
		Servers: []harness.NodeSpec{{Token: harness.SecureToken, TokenIn: []harness.TokenPlace{harness.InEnvFile}}, {TokenIn: []harness.TokenPlace{harness.InConfig}}},
		Agents:  []harness.NodeSpec{{TokenIn: []harness.TokenPlace{harness.InEnvFile}}},
	})
	c := f.Cluster("down")
	s1, s2 := c.Servers[0], c.Servers[1]
	args := []string{"rotate-ca", "-i", f.InventoryPath(), "-o", "json", "--log-format", "json", "--health-timeout", "3m", "--timeout", "20s"}
	runKilled(t, ctx, afterNode("servers", s1.Name, s2.Name), args...)
	if err := f.StopNode(ctx, s1.Name); err != nil {
		t.Fatal(err)
	}
	res := fleetcert(t, ctx, args...)
	if res.Code != 3 || !strings.Contains(res.Stdout+res.Stderr, s1.Name+": not reachable") {
		t.Errorf("with the primary down: want exit 3 naming %s\n%s", s1.Name, res)
	}
	if err := f.StartNode(ctx, s1.Name); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitReady(ctx, "down"); err != nil {
		t.Fatal(err)
	}
	assertRecovered(t, ctx, f, "down", args...)
}

// TestFaultDropDuringWrites: the SSH connection to a node drops (the node
// falls off the network) right as fleetcert writes one kind of file: an
// env file, a unit file, a token file, a staged CA file, the run state. The
// file is afterwards the old content or the new, never a torn one; a
// staged file cut short is never loaded; a rerun completes.
func TestFaultDropDuringWrites(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 15*time.Minute)
	f := startRotFleet(t, ctx, harness.ClusterSpec{
		Name: "drop",
		Servers: []harness.NodeSpec{
			{Token: harness.SecureToken, TokenIn: []harness.TokenPlace{harness.InEnvFile}},
			{TokenIn: []harness.TokenPlace{harness.InExecStart}},
		},
		Agents: []harness.NodeSpec{{TokenIn: []harness.TokenPlace{harness.InTokenFileArg}}},
	})
	c := f.Cluster("drop")
	s1, s2, a1 := c.Servers[0], c.Servers[1], c.Agents[0]
	args := []string{"rotate-ca", "-i", f.InventoryPath(), "-o", "json", "--log-format", "json", "--health-timeout", "2m", "--timeout", "15s"}
	stateFile := s1.DataDir + "/server/fleetcert/run.json"
	for _, tc := range []struct {
		name string
		node *harness.Node
		file string // the file whose write the drop cuts; "" for staging
		at   func(l logLine) bool
	}{
		{"env file", s1, s1.TokenFile(harness.InEnvFile), func(l logLine) bool {
			return l.Node == s1.Name && strings.HasPrefix(l.Msg, "rewrite ") && strings.Contains(l.Msg, s1.TokenFile(harness.InEnvFile))
		}},
		{"unit file", s2, s2.TokenFile(harness.InExecStart), func(l logLine) bool {
			return l.Node == s2.Name && strings.HasPrefix(l.Msg, "rewrite ") && strings.Contains(l.Msg, s2.TokenFile(harness.InExecStart))
		}},
		{"token file", a1, a1.TokenFile(harness.InTokenFileArg), func(l logLine) bool {
			return l.Node == a1.Name && strings.HasPrefix(l.Msg, "rewrite ") && strings.Contains(l.Msg, a1.TokenFile(harness.InTokenFileArg))
		}},
		{"staged CA file", s1, "", func(l logLine) bool { return l.Node == s1.Name && strings.HasPrefix(l.Msg, "stage ") }},
		{"run state", s1, stateFile, func(l logLine) bool {
			return l.Node == s1.Name && strings.HasPrefix(l.Msg, "take the cluster lock")
		}},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "-"), func(t *testing.T) {
			oldHash := clusterHash(t, ctx, f, "drop")
			var before []byte
			if tc.file != "" {
				before, _ = f.ReadFile(ctx, tc.node.Name, tc.file)
			}
			dropped := make(chan error, 1)
			var once sync.Once
			p := startFleetcert(t, ctx, func(l logLine, _ string) {
				if tc.at(l) {
					once.Do(func() { dropped <- f.Disconnect(ctx, tc.node.Name) })
				}
			}, args...)
			res := p.wait(t)
			select {
			case err := <-dropped:
				if err != nil {
					t.Fatal(err)
				}
			default:
				t.Fatalf("the run never reached the write:\n%s", res)
			}
			if err := f.Reconnect(ctx, tc.node.Name); err != nil {
				t.Fatal(err)
			}
			t.Logf("the run with the drop exited %d", res.Code)
			var cut []byte
			if tc.file != "" {
				cut, _ = f.ReadFile(ctx, tc.node.Name, tc.file)
			}
			if tc.name == "staged CA file" && res.Code != 0 {
				var state struct{ Loaded bool }
				if err := json.Unmarshal(mustRead(t, ctx, f, s1.Name, stateFile), &state); err != nil || state.Loaded {
					t.Errorf("after a drop during staging the run state says loaded=%v (%v): a torn stage must never be loaded", state.Loaded, err)
				}
			}
			if err := f.WaitReady(ctx, "drop"); err != nil {
				t.Fatal(err)
			}
			assertRecovered(t, ctx, f, "drop", args...)
			if tc.file == "" || tc.file == stateFile {
				if tc.file == stateFile && len(cut) > 0 && !json.Valid(cut) {
					t.Errorf("%s after the drop is not whole JSON:\n%s", tc.file, cut)
				}
				return
			}
			newHash := clusterHash(t, ctx, f, "drop")
			if after := []byte(strings.ReplaceAll(string(before), oldHash, newHash)); string(cut) != string(before) && string(cut) != string(after) {
				t.Errorf("%s after the drop is neither the old content nor the new:\n--- old\n%s\n--- found\n%s", tc.file, before, cut)
			}
		})
	}
}
