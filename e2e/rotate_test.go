package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fleetcert/fleetcert/e2e/harness"
	"github.com/fleetcert/fleetcert/internal/certtest"
)

// The end-to-end proof of rotate-ca and rotate-sa-key (issue 5, "How it is
// shown"): the built fleetcert binary against container fleets. Each test
// has its own small fleet, so the tests run in parallel and clean up as
// soon as they end.

// TestRotateCAHA: an HA cluster (3 servers with embedded etcd, 2 agents) on
// k3s's default CAs, with the join token in every place install.sh or an
// operator puts one. rotate-ca cross-signs: every server serves a new
// bundle, every secure token pins its hash (computed here from the served
// bytes) with its credentials unchanged, every node is Ready, and during the
// rollout the agents that still run on the old CA keep working with servers
// already on the new one.
func TestRotateCAHA(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 12*time.Minute)
	f := startRotFleet(t, ctx, harness.ClusterSpec{
		Name: "ha",
		Servers: []harness.NodeSpec{
			{Token: harness.SecureToken, TokenIn: []harness.TokenPlace{harness.InEnvFile, harness.InConfig}},
			{TokenIn: []harness.TokenPlace{harness.InExecStart, harness.InConfigDropIn}},
			{TokenIn: []harness.TokenPlace{harness.InExecStartEquals, harness.InTokenFileArg}},
		},
		Agents: []harness.NodeSpec{
			{TokenIn: []harness.TokenPlace{harness.InExecStartShort, harness.InDistroEnvFile}},
			{TokenIn: []harness.TokenPlace{harness.InTokenFileConfig, harness.InEnvFile}},
		},
	})
	c := f.Cluster("ha")
	oldHash := clusterHash(t, ctx, f, "ha")
	assertTokensPin(t, ctx, f, "ha", oldHash) // the starting point is sane
	tokenFilesBefore := readTokenFiles(t, ctx, f, "ha")
	oldBundle, err := f.ReadFile(ctx, c.Servers[0].Name, path.Join(c.Servers[0].DataDir, "server/tls/server-ca.crt"))
	if err != nil {
		t.Fatal(err)
	}

	// While the servers restart one by one, agents not yet restarted run on
	// the old CA with their old leaf certs. Only cross-signing lets them and
	// a server on the new CA trust each other. The test proves it with an
	// agent's own credentials from before the run (its server CA bundle,
	// its kubelet client cert and key): a heartbeat, as the agent sends it,
	// to the first server right after that server passed its gates on the
	// new CA while the others were still on the old one, and to every server
	// after the run.
	s1 := c.Servers[0]
	type creds struct{ serverCA, cert, key []byte }
	oldAgent := map[string]creds{}
	for _, a := range c.Agents {
		dir := path.Join(a.DataDir, "agent")
		oldAgent[a.Name] = creds{mustRead(t, ctx, f, a.Name, dir+"/server-ca.crt"),
			mustRead(t, ctx, f, a.Name, dir+"/client-kubelet.crt"), mustRead(t, ctx, f, a.Name, dir+"/client-kubelet.key")}
	}
	midRun := make(chan error, 1)
	var once sync.Once
	p := startFleetcert(t, ctx, func(l logLine, _ string) {
		if l.Node == s1.Name && l.Phase == "servers" && strings.HasPrefix(l.Msg, "CA files on disk") {
			once.Do(func() {
				a := c.Agents[0]
				cr := oldAgent[a.Name]
				midRun <- heartbeatAs(ctx, f, s1, cr.serverCA, cr.cert, cr.key)
			})
		}
	}, "rotate-ca", "-i", f.InventoryPath(), "-o", "json", "--log-format", "json", "--health-timeout", "3m")
	res := p.wait(t)
	if res.Code != 0 {
		t.Fatalf("rotate-ca failed:\n%s", res)
	}
	rep := res.report(t)
	t.Logf("rotate-ca on ha took %s", durationOf(res))

	// Served bundles: every server serves the same, new bundle.
	newHash := clusterHash(t, ctx, f, "ha")
	if newHash == oldHash {
		t.Fatalf("the served CA hash did not change (%s)", oldHash)
	}
	for _, s := range c.Servers {
		b, err := servedCA(ctx, f, s)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(b, oldBundle) {
			t.Errorf("%s still serves the old bundle", s.Name)
		}
		onDisk, err := f.ReadFile(ctx, s.Name, path.Join(s.DataDir, "server/tls/server-ca.crt"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, onDisk) {
			t.Errorf("%s serves a bundle that differs from its server/tls/server-ca.crt", s.Name)
		}
		tok, err := f.ReadFile(ctx, s.Name, path.Join(s.DataDir, "server/token"))
		if err != nil {
			t.Fatal(err)
		}
		if h := tokenHash(string(tok)); h != newHash {
			t.Errorf("%s: server/token pins %s, want %s", s.Name, h, newHash)
		}
	}
	// The new bundle chains to the old root: cross-signing, not a new root.
	if !chainsTo(t, mustRead(t, ctx, f, c.Servers[0].Name, path.Join(c.Servers[0].DataDir, "server/tls/server-ca.crt")), oldBundle) {
		t.Error("the new server CA bundle does not verify against the old server CA (not cross-signed)")
	}
	for _, a := range c.Agents {
		b := mustRead(t, ctx, f, a.Name, path.Join(a.DataDir, "agent/server-ca.crt"))
		if h := hashCA(b); h != newHash {
			t.Errorf("%s: agent/server-ca.crt hash %s, want %s", a.Name, h, newHash)
		}
	}

	// The report agrees with what the test computed itself.
	if rep.Outcome != "done" || rep.Mode != "cross-sign" || rep.OldHash != oldHash || rep.TargetHash != newHash {
		t.Errorf("report: outcome %q mode %q hashes %s -> %s; want done, cross-sign, %s -> %s",
			rep.Outcome, rep.Mode, rep.OldHash, rep.TargetHash, oldHash, newHash)
	}
	if rep.Snapshot == "" {
		t.Error("no etcd snapshot reported on an embedded-etcd cluster")
	}
	for _, n := range c.Nodes() {
		if o := rep.nodeOutcome(n.Name); o != "restarted" {
			t.Errorf("%s: outcome %q, want restarted", n.Name, o)
		}
	}
	// Every restarted node's time is measured, agents included.
	for _, n := range rep.Nodes {
		if n.Duration <= 0 {
			t.Errorf("%s (%s): durationNs %d in the report", n.Node, n.Role, n.Duration)
		}
	}

	// Tokens: every place, every node, new hash, same credentials.
	assertTokensPin(t, ctx, f, "ha", newHash)
	assertOnlyHashChanged(t, ctx, f, "ha", tokenFilesBefore, oldHash, newHash)
	for _, n := range c.Nodes() {
		if !strings.HasPrefix(n.Token, "K10") {
			t.Errorf("%s was not installed with a secure token; the test wants one everywhere", n.Name)
		}
	}
	// The ExecStart edits took effect: systemd runs the unit as now written.
	for _, n := range c.Nodes() {
		r, err := f.Exec(ctx, n.Name, "systemctl show -p NeedDaemonReload --value "+n.Unit)
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(r.Stdout) != "no" {
			t.Errorf("%s: unit changed on disk without daemon-reload", n.Name)
		}
	}
	assertAllReady(t, ctx, f, "ha")
	assertNoMismatchLogged(t, ctx, f, c.Nodes()...)

	// Cross-signing during and after the rollout.
	select {
	case err := <-midRun:
		if err != nil {
			t.Errorf("mid-run, %s on the new CA and %s still on the old one do not trust each other: %v", s1.Name, c.Agents[0].Name, err)
		}
	default:
		t.Errorf("the run never reported %s's last gate; the mid-run trust check did not run", s1.Name)
	}
	for _, s := range c.Servers {
		for _, a := range c.Agents {
			cr := oldAgent[a.Name]
			if err := heartbeatAs(ctx, f, s, cr.serverCA, cr.cert, cr.key); err != nil {
				t.Errorf("%s (new CA) and %s's credentials from before the run do not trust each other: %v", s.Name, a.Name, err)
			}
		}
	}
}

// TestRotateCACustomRoot: a cluster installed with a custom CA (root →
// intermediate → cluster CAs). rotate-ca with the operator's root and root
// key makes new cluster CAs under the same root: the served bundle changes,
// its hash does not, and no token file on any node changes. A second
// rotation with the intermediate and its key instead of the root key works
// the same way.
func TestRotateCACustomRoot(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 10*time.Minute)
	f := startRotFleet(t, ctx, harness.ClusterSpec{
		Name:     "cust",
		CustomCA: true,
		Servers:  []harness.NodeSpec{{TokenIn: []harness.TokenPlace{harness.InEnvFile, harness.InConfigDropIn}}},
		Agents:   []harness.NodeSpec{{TokenIn: []harness.TokenPlace{harness.InExecStart, harness.InEnvFile}}},
	})
	c := f.Cluster("cust")
	ca := c.CA
	if ca == nil {
		t.Fatal("harness did not expose the custom CA")
	}
	for _, step := range []struct {
		name string
		args []string
	}{
		{"root key", []string{"--root-ca", ca.RootCert, "--root-key", ca.RootKey}},
		{"intermediate", []string{"--root-ca", ca.RootCert, "--intermediate-ca", ca.IntermediateCert, "--intermediate-key", ca.IntermediateKey}},
	} {
		oldHash := clusterHash(t, ctx, f, "cust")
		s := c.Servers[0]
		oldBundle := mustRead(t, ctx, f, s.Name, path.Join(s.DataDir, "server/tls/server-ca.crt"))
		tokenSums := map[string]map[string]string{}
		for _, n := range c.Nodes() {
			sums, err := f.Checksums(ctx, n.Name, append(tokenFiles(n), "/etc/systemd/system", "/etc/rancher/k3s", "/etc/default")...)
			if err != nil {
				t.Fatal(err)
			}
			tokenSums[n.Name] = sums
		}

		res := fleetcert(t, ctx, append([]string{"rotate-ca", "-i", f.InventoryPath(), "-o", "json", "--health-timeout", "3m"}, step.args...)...)
		if res.Code != 0 {
			t.Fatalf("%s: rotate-ca failed:\n%s", step.name, res)
		}
		t.Logf("%s: rotate-ca took %s", step.name, durationOf(res))
		rep := res.report(t)
		if rep.Mode != "custom" || rep.Outcome != "done" || rep.TargetHash != oldHash {
			t.Errorf("%s: report: mode %q outcome %q target %s; want custom, done, %s", step.name, rep.Mode, rep.Outcome, rep.TargetHash, oldHash)
		}
		if h := clusterHash(t, ctx, f, "cust"); h != oldHash {
			t.Errorf("%s: the served hash changed: %s -> %s (same root: it must not)", step.name, oldHash, h)
		}
		served, err := servedCA(ctx, f, s)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(served, oldBundle) {
			t.Errorf("%s: the server still serves the old bundle: nothing was rotated", step.name)
		}
		for _, n := range c.Nodes() {
			after, err := f.Checksums(ctx, n.Name, append(tokenFiles(n), "/etc/systemd/system", "/etc/rancher/k3s", "/etc/default")...)
			if err != nil {
				t.Fatal(err)
			}
			// k3s regenerates its kubeconfig at every server start.
			delete(after, "/etc/rancher/k3s/k3s.yaml")
			delete(tokenSums[n.Name], "/etc/rancher/k3s/k3s.yaml")
			if diff := harness.DiffChecksums(tokenSums[n.Name], after); len(diff) > 0 {
				t.Errorf("%s: %s: token or unit files changed:\n  %s", step.name, n.Name, strings.Join(diff, "\n  "))
			}
		}
		for _, n := range rep.Nodes {
			if len(n.Files) > 0 {
				t.Errorf("%s: report says %s had files changed: %v", step.name, n.Node, n.Files)
			}
		}
		assertAllReady(t, ctx, f, "cust")
		assertNoMismatchLogged(t, ctx, f, c.Nodes()...)
	}
}

// TestRotateCAForceNewRoot: --force to an unrelated root refuses without
// --yes when there is no terminal to ask on (exit 3, nothing changed), and
// with --yes completes: tokens pin the new root, nodes Ready.
func TestRotateCAForceNewRoot(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 10*time.Minute)
	f := startRotFleet(t, ctx, harness.ClusterSpec{
		Name:    "forced",
		Servers: []harness.NodeSpec{{Token: harness.SecureToken}},
		Agents:  []harness.NodeSpec{{TokenIn: []harness.TokenPlace{harness.InConfig}}},
	})
	c := f.Cluster("forced")
	oldHash := clusterHash(t, ctx, f, "forced")
	oldBundle := mustRead(t, ctx, f, c.Servers[0].Name, path.Join(c.Servers[0].DataDir, "server/tls/server-ca.crt"))

	a := c.Agents[0]
	agentDir := path.Join(a.DataDir, "agent")
	oldCA, oldCert, oldKey := mustRead(t, ctx, f, a.Name, agentDir+"/server-ca.crt"),
		mustRead(t, ctx, f, a.Name, agentDir+"/client-kubelet.crt"), mustRead(t, ctx, f, a.Name, agentDir+"/client-kubelet.key")

	before := fleetChecksums(t, ctx, f, "forced")
	res := fleetcertAsIs(t, ctx, "rotate-ca", "-i", f.InventoryPath(), "--force")
	if res.Code != 3 {
		t.Errorf("--force without --yes and without a TTY: want exit 3\n%s", res)
	}
	if !strings.Contains(res.Stderr, "--yes") {
		t.Errorf("the refusal does not say how to go on (--yes):\n%s", res)
	}
	assertUnchanged(t, ctx, f, "forced", before, "a refused --force run")

	res = fleetcert(t, ctx, "rotate-ca", "-i", f.InventoryPath(), "--force", "--yes", "-o", "json", "--health-timeout", "3m")
	if res.Code != 0 {
		t.Fatalf("rotate-ca --force --yes failed:\n%s", res)
	}
	t.Logf("rotate-ca --force took %s", durationOf(res))
	rep := res.report(t)
	newHash := clusterHash(t, ctx, f, "forced")
	if newHash == oldHash || rep.Mode != "new-root" || rep.TargetHash != newHash {
		t.Errorf("report mode %q target %s; served %s -> %s", rep.Mode, rep.TargetHash, oldHash, newHash)
	}
	if chainsTo(t, mustRead(t, ctx, f, c.Servers[0].Name, path.Join(c.Servers[0].DataDir, "server/tls/server-ca.crt")), oldBundle) {
		t.Error("the forced new CA still chains to the old root")
	}
	assertTokensPin(t, ctx, f, "forced", newHash)
	assertAllReady(t, ctx, f, "forced")
	// Unlike cross-signing, an unrelated root breaks trust with what a node
	// held before (the negative control of TestRotateCAHA's trust check).
	if err := heartbeatAs(ctx, f, c.Servers[0], oldCA, oldCert, oldKey); err == nil {
		t.Error("after a forced new root, the agent's credentials from before the run are still trusted")
	}
	for _, n := range c.Nodes() {
		if len(secureTokensIn(t, ctx, f, n)) == 0 {
			t.Errorf("%s: no token file", n.Name)
		}
	}
}

// TestRotateSAKey: rotate-sa-key puts a new key first in service.key and
// keeps the old one after it, on every server; the servers restart, the
// agent does not (same systemd invocation, PID and start time).
func TestRotateSAKey(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 10*time.Minute)
	f := startRotFleet(t, ctx, harness.ClusterSpec{
		Name:    "sakey",
		Servers: []harness.NodeSpec{{}, {}},
		Agents:  []harness.NodeSpec{{}},
	})
	c := f.Cluster("sakey")
	oldHash := clusterHash(t, ctx, f, "sakey")
	keyPath := func(n *harness.Node) string { return path.Join(n.DataDir, "server/tls/service.key") }
	oldKeys := pemBlocks(mustRead(t, ctx, f, c.Servers[0].Name, keyPath(c.Servers[0])))
	if len(oldKeys) == 0 {
		t.Fatal("no key in service.key")
	}
	starts := map[string]string{}
	for _, n := range c.Nodes() {
		starts[n.Name] = unitStart(t, ctx, f, n)
	}
	agentSums, err := f.Checksums(ctx, c.Agents[0].Name, watched(c.Agents[0])...)
	if err != nil {
		t.Fatal(err)
	}

	res := fleetcert(t, ctx, "rotate-sa-key", "-i", f.InventoryPath(), "-o", "json", "--health-timeout", "3m")
	if res.Code != 0 {
		t.Fatalf("rotate-sa-key failed:\n%s", res)
	}
	t.Logf("rotate-sa-key took %s", durationOf(res))
	rep := res.report(t)
	if rep.Mode != "service-key" || rep.Outcome != "done" {
		t.Errorf("report: mode %q outcome %q", rep.Mode, rep.Outcome)
	}
	for _, s := range c.Servers {
		keys := pemBlocks(mustRead(t, ctx, f, s.Name, keyPath(s)))
		if len(keys) != len(oldKeys)+1 {
			t.Errorf("%s: service.key holds %d keys, want %d (a new one and the old ones)", s.Name, len(keys), len(oldKeys)+1)
			continue
		}
		if bytes.Equal(keys[0], oldKeys[0]) {
			t.Errorf("%s: service.key does not start with a new key", s.Name)
		}
		for i, k := range oldKeys {
			if !bytes.Equal(keys[i+1], k) {
				t.Errorf("%s: old key %d is not kept after the new one", s.Name, i)
			}
		}
		if unitStart(t, ctx, f, s) == starts[s.Name] {
			t.Errorf("%s: server was not restarted", s.Name)
		}
	}
	a := c.Agents[0]
	if got := unitStart(t, ctx, f, a); got != starts[a.Name] {
		t.Errorf("%s: the agent's k3s was restarted:\n before: %s\n after:  %s", a.Name, starts[a.Name], got)
	}
	after, err := f.Checksums(ctx, a.Name, watched(a)...)
	if err != nil {
		t.Fatal(err)
	}
	if diff := harness.DiffChecksums(agentSums, after); len(diff) > 0 {
		t.Errorf("rotate-sa-key changed files on the agent:\n  %s", strings.Join(diff, "\n  "))
	}
	if o := rep.nodeOutcome(a.Name); o != "untouched" {
		t.Errorf("%s: outcome %q, want untouched", a.Name, o)
	}
	if h := clusterHash(t, ctx, f, "sakey"); h != oldHash {
		t.Errorf("the CA hash changed: %s -> %s", oldHash, h)
	}
	assertTokensPin(t, ctx, f, "sakey", oldHash)
	assertAllReady(t, ctx, f, "sakey")
}

// TestRotateCAInterrupted: the controller is killed (SIGKILL) once the new
// CA is loaded and the first server restarted on it, as the second server's
// turn begins. The same command again resumes that run, with the same
// target hash, and completes; afterwards every token on every node pins
// what the servers serve. A second rotation (now of previously
// cross-signed CAs) is killed right after loading, before any restart, and
// resumes the same way.
func TestRotateCAInterrupted(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 10*time.Minute)
	f := startRotFleet(t, ctx, harness.ClusterSpec{
		Name:    "intr",
		Servers: []harness.NodeSpec{{Token: harness.SecureToken}, {TokenIn: []harness.TokenPlace{harness.InExecStart}}},
		Agents:  []harness.NodeSpec{{TokenIn: []harness.TokenPlace{harness.InEnvFile, harness.InConfig}}},
	})
	c := f.Cluster("intr")
	s1, s2 := c.Servers[0], c.Servers[1]
	args := []string{"rotate-ca", "-i", f.InventoryPath(), "-o", "json", "--log-format", "json", "--health-timeout", "3m"}
	stateFile := path.Join(s1.DataDir, "server/fleetcert/run.json")

	for _, round := range []struct {
		name   string
		killAt func(logLine) bool
		done   []string // nodes done in the run state at the kill
	}{
		{"after the first server", func(l logLine) bool {
			// The second server's restart is the first change made to it
			// after its token rewrite: the first server passed every gate.
			return l.Node == s2.Name && l.Phase == "servers" && strings.HasPrefix(l.Msg, "restart ")
		}, []string{s1.Name}},
		{"right after loading", func(l logLine) bool {
			return l.Node == "" && l.Phase == "servers" && l.Msg == "servers"
		}, nil},
	} {
		oldHash := clusterHash(t, ctx, f, "intr")
		var p *fcProcess
		var once sync.Once
		killed := make(chan struct{})
		p = startFleetcert(t, ctx, func(l logLine, _ string) {
			if round.killAt(l) {
				once.Do(func() {
					_ = p.cmd.Process.Signal(syscall.SIGKILL)
					close(killed)
				})
			}
		}, args...)
		res := p.wait(t)
		select {
		case <-killed:
		default:
			t.Fatalf("%s: the run ended before the point to interrupt it:\n%s", round.name, res)
		}

		var state struct {
			RunID      string            `json:"runId"`
			Loaded     bool              `json:"loaded"`
			TargetHash string            `json:"targetHash"`
			Nodes      map[string]string `json:"nodes"`
		}
		if err := json.Unmarshal(mustRead(t, ctx, f, s1.Name, stateFile), &state); err != nil {
			t.Fatalf("%s: run state: %v", round.name, err)
		}
		if !state.Loaded || state.TargetHash == "" || state.TargetHash == oldHash {
			t.Fatalf("%s: run state after the kill: loaded=%v target=%q; want loaded and a new target", round.name, state.Loaded, state.TargetHash)
		}
		for _, n := range round.done {
			if state.Nodes[n] != "done" {
				t.Fatalf("%s: run state after the kill: nodes %v, want %s done", round.name, state.Nodes, n)
			}
			if h := servedHashes(t, ctx, f, "intr")[n]; h != state.TargetHash {
				t.Errorf("%s: %s serves %s after the kill, want the run's target %s", round.name, n, h, state.TargetHash)
			}
		}

		res = fleetcert(t, ctx, args...)
		if res.Code != 0 {
			t.Fatalf("%s: the rerun failed:\n%s", round.name, res)
		}
		t.Logf("%s: resumed rotate-ca took %s", round.name, durationOf(res))
		rep := res.report(t)
		if !rep.Resumed || rep.RunID != state.RunID || rep.Mode != "cross-sign" {
			t.Errorf("%s: rerun: resumed=%v run %s mode %s; want resumed run %s, cross-sign", round.name, rep.Resumed, rep.RunID, rep.Mode, state.RunID)
		}
		if rep.TargetHash != state.TargetHash || rep.OldHash != oldHash {
			t.Errorf("%s: rerun hashes %s -> %s, want %s -> %s (the interrupted run's)", round.name, rep.OldHash, rep.TargetHash, oldHash, state.TargetHash)
		}
		newHash := clusterHash(t, ctx, f, "intr")
		if newHash != state.TargetHash {
			t.Errorf("%s: servers serve %s, want the interrupted run's target %s", round.name, newHash, state.TargetHash)
		}
		for _, n := range round.done {
			if o := rep.nodeOutcome(n); o != "already-done" {
				t.Errorf("%s: %s: outcome %q on resume, want already-done", round.name, n, o)
			}
		}
		assertTokensPin(t, ctx, f, "intr", newHash)
		for _, s := range c.Servers {
			if h := tokenHash(string(mustRead(t, ctx, f, s.Name, path.Join(s.DataDir, "server/token")))); h != newHash {
				t.Errorf("%s: %s: server/token pins %s, want %s", round.name, s.Name, h, newHash)
			}
		}
		assertAllReady(t, ctx, f, "intr")
		assertNoMismatchLogged(t, ctx, f, c.Agents...)
		if r, _ := f.Exec(ctx, s1.Name, "test -e "+stateFile); r.ExitCode == 0 {
			t.Errorf("%s: %s still exists after the run completed", round.name, stateFile)
		}
	}
}

// TestRotateCAFailedGate: the second server never becomes healthy after
// its restart (emulator fault hang-start). rotate-ca exits 1 naming that
// node and the gate, and touches no agent. With the fault cleared, the same
// command resumes and completes.
func TestRotateCAFailedGate(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 10*time.Minute)
	f := startRotFleet(t, ctx, harness.ClusterSpec{
		Name:    "hang",
		Servers: []harness.NodeSpec{{}, {}},
		Agents:  []harness.NodeSpec{{TokenIn: []harness.TokenPlace{harness.InConfigDropIn}}},
	})
	c := f.Cluster("hang")
	s2, a := c.Servers[1], c.Agents[0]
	// Read at start: the running server is fine, its restart will hang.
	if err := f.WriteFile(ctx, s2.Name, "/etc/k3semu/fault", []byte("hang-start\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	agentStart := unitStart(t, ctx, f, a)
	agentSums, err := f.Checksums(ctx, a.Name, watched(a)...)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"rotate-ca", "-i", f.InventoryPath(), "-o", "json", "--health-timeout", "30s"}
	res := fleetcert(t, ctx, args...)
	if res.Code != 1 {
		t.Fatalf("want exit 1 for a server that never gets healthy\n%s", res)
	}
	rep := res.report(t)
	gateRE := regexp.MustCompile(regexp.QuoteMeta(s2.Name) + `: gate "[^"]+" did not pass`)
	if !gateRE.MatchString(rep.Error) {
		t.Errorf("the error does not name %s and its gate: %q", s2.Name, rep.Error)
	}
	if !strings.Contains(res.Stderr+res.Stdout, s2.Name) {
		t.Errorf("output does not name %s", s2.Name)
	}
	if o := rep.nodeOutcome(s2.Name); o != "failed" {
		t.Errorf("%s: outcome %q, want failed", s2.Name, o)
	}
	if o := rep.nodeOutcome(a.Name); o != "untouched" {
		t.Errorf("%s: outcome %q, want untouched", a.Name, o)
	}
	if got := unitStart(t, ctx, f, a); got != agentStart {
		t.Errorf("the agent was restarted:\n before: %s\n after:  %s", agentStart, got)
	}
	after, err := f.Checksums(ctx, a.Name, watched(a)...)
	if err != nil {
		t.Fatal(err)
	}
	// The backup phase, before any node is touched, copies the agent's
	// token files into its fleetcert backup directory; that is the only
	// difference allowed.
	backups := path.Join(a.DataDir, "agent/fleetcert") + "/"
	var diff []string
	for _, d := range harness.DiffChecksums(agentSums, after) {
		if !strings.HasPrefix(d, "added "+backups) {
			diff = append(diff, d)
		}
	}
	if len(diff) > 0 {
		t.Errorf("files changed on the agent:\n  %s", strings.Join(diff, "\n  "))
	}

	// The cause is fixed: the hung start goes on by itself (the emulator
	// notices the cleared fault), and the node gets healthy again.
	if err := f.WriteFile(ctx, s2.Name, "/etc/k3semu/fault", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitReady(ctx, "hang"); err != nil {
		t.Fatal(err)
	}
	res = fleetcert(t, ctx, append(args[:len(args)-1], "3m")...)
	if res.Code != 0 {
		t.Fatalf("the rerun after clearing the fault failed:\n%s", res)
	}
	rep = res.report(t)
	if !rep.Resumed {
		t.Error("the rerun did not resume the failed run")
	}
	newHash := clusterHash(t, ctx, f, "hang")
	if rep.TargetHash != newHash || newHash == rep.OldHash {
		t.Errorf("rerun target %s, served %s, old %s", rep.TargetHash, newHash, rep.OldHash)
	}
	assertTokensPin(t, ctx, f, "hang", newHash)
	assertAllReady(t, ctx, f, "hang")
}

// TestRotateCADryRun: --dry-run on a fresh cluster changes nothing on any
// node (every file under the data dir and /etc) and lists the changes; the
// real run then makes the same changes (same nodes, same things, modulo the
// run id and the new hash, which a real run makes afresh).
func TestRotateCADryRun(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 10*time.Minute)
	f := startRotFleet(t, ctx, harness.ClusterSpec{
		Name: "dry",
		// A custom data dir and an INSTALL_K3S_NAME unit: fleetcert must
		// find (and the test watch) everything where the node keeps it.
		Servers: []harness.NodeSpec{{Token: harness.SecureToken, DataDir: "/srv/k3s", TokenIn: []harness.TokenPlace{harness.InExecStartEquals}}},
		Agents:  []harness.NodeSpec{{Unit: "k3s-worker", TokenIn: []harness.TokenPlace{harness.InEnvFile, harness.InConfigDropIn}}},
	})
	c := f.Cluster("dry")
	oldHash := clusterHash(t, ctx, f, "dry")
	tokenFilesBefore := readTokenFiles(t, ctx, f, "dry")
	before := fleetChecksums(t, ctx, f, "dry")
	starts := map[string]string{}
	for _, n := range c.Nodes() {
		starts[n.Name] = unitStart(t, ctx, f, n)
	}
	dry := fleetcert(t, ctx, "rotate-ca", "-i", f.InventoryPath(), "--dry-run", "-o", "json")
	if dry.Code != 0 {
		t.Fatalf("dry run failed:\n%s", dry)
	}
	assertUnchanged(t, ctx, f, "dry", before, "--dry-run")
	for _, n := range c.Nodes() {
		if got := unitStart(t, ctx, f, n); got != starts[n.Name] {
			t.Errorf("--dry-run restarted %s", n.Name)
		}
	}
	drep := dry.report(t)
	if drep.Outcome != "planned" || drep.TargetHash == "" || drep.TargetHash == drep.OldHash {
		t.Errorf("dry run report: outcome %q, hashes %s -> %s", drep.Outcome, drep.OldHash, drep.TargetHash)
	}
	// The plan names a token rewrite and a restart on every node.
	for _, n := range c.Nodes() {
		var rewrite, restart bool
		for _, ch := range drep.Changes {
			if ch.Node == n.Name {
				rewrite = rewrite || strings.HasPrefix(ch.What, "rewrite ")
				restart = restart || strings.HasPrefix(ch.What, "restart ")
			}
		}
		if !rewrite || !restart {
			t.Errorf("dry-run plan for %s: token rewrite %v, restart %v; want both", n.Name, rewrite, restart)
		}
	}

	real := fleetcert(t, ctx, "rotate-ca", "-i", f.InventoryPath(), "-o", "json", "--health-timeout", "3m")
	if real.Code != 0 {
		t.Fatalf("real run failed:\n%s", real)
	}
	rrep := real.report(t)
	norm := func(rep clusterReport) []string {
		hexRE := regexp.MustCompile(`[0-9a-f]{12}…|[0-9a-f]{64}`)
		var out []string
		for _, ch := range rep.Changes {
			what := strings.ReplaceAll(ch.What, rep.RunID, "RUNID")
			what = hexRE.ReplaceAllString(what, "HASH")
			out = append(out, ch.Node+" | "+ch.Phase+" | "+what)
		}
		sort.Strings(out)
		return out
	}
	dn, rn := norm(drep), norm(rrep)
	if strings.Join(dn, "\n") != strings.Join(rn, "\n") {
		t.Errorf("the dry run's plan and the real run's changes differ:\n--- dry run:\n%s\n--- real run:\n%s", strings.Join(dn, "\n"), strings.Join(rn, "\n"))
	}
	newHash := clusterHash(t, ctx, f, "dry")
	if newHash == oldHash || rrep.TargetHash != newHash {
		t.Errorf("real run: served %s -> %s, report target %s", oldHash, newHash, rrep.TargetHash)
	}
	assertTokensPin(t, ctx, f, "dry", newHash)
	assertOnlyHashChanged(t, ctx, f, "dry", tokenFilesBefore, oldHash, newHash)
	assertAllReady(t, ctx, f, "dry")
}

// TestRotateCARefusals: runs that must stop before touching anything, with
// exit 2 (bad input) or 3 (a safety check) and a message saying why; every
// file under the data dir and /etc of every node is unchanged afterwards.
func TestRotateCARefusals(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 10*time.Minute)
	f := startRotFleet(t, ctx, harness.ClusterSpec{
		Name:    "ref",
		Servers: []harness.NodeSpec{{}},
		Agents:  []harness.NodeSpec{{}},
	})
	c := f.Cluster("ref")
	s, a := c.Servers[0], c.Agents[0]
	dir := t.TempDir()

	check := func(t *testing.T, wantCode int, wantMsg []string, args ...string) {
		t.Helper()
		before := fleetChecksums(t, ctx, f, "ref")
		res := fleetcert(t, ctx, append([]string{"rotate-ca", "--health-timeout", "1m"}, args...)...)
		if res.Code != wantCode {
			t.Errorf("want exit %d\n%s", wantCode, res)
		}
		out := res.Stdout + res.Stderr
		for _, m := range wantMsg {
			if !strings.Contains(out, m) {
				t.Errorf("output lacks %q\n%s", m, res)
			}
		}
		assertUnchanged(t, ctx, f, "ref", before, "a refused run")
	}

	t.Run("agent listed as server", func(t *testing.T) {
		inv := writeInventory(t, f, "ref", []*harness.Node{s, a}, nil)
		check(t, 3, []string{a.Name + ": the inventory lists it as server but the node is an agent"}, "-i", inv)
	})

	rootCert, rootKey := writeCA(t, dir, "root", certtest.NewCA(certtest.Spec{CN: "e2e-root"}))
	_, otherKey := writeCA(t, dir, "other-root", certtest.NewCA(certtest.Spec{CN: "e2e-other-root"}))
	t.Run("root key does not match the root", func(t *testing.T) {
		check(t, 2, []string{"root key does not belong to the root"}, "-i", f.InventoryPath(), "--root-ca", rootCert, "--root-key", otherKey)
	})
	t.Run("intermediate not signed by the root", func(t *testing.T) {
		stranger := certtest.NewCA(certtest.Spec{CN: "e2e-stranger"})
		interCert, interKey := writeCA(t, dir, "inter", stranger.IssueCA(certtest.Spec{CN: "e2e-inter"}))
		check(t, 2, []string{"intermediate"}, "-i", f.InventoryPath(), "--root-ca", rootCert, "--intermediate-ca", interCert, "--intermediate-key", interKey)
		_ = rootKey
	})

	t.Run("k3s too old", func(t *testing.T) {
		for _, n := range c.Nodes() {
			if err := f.WriteFile(ctx, n.Name, "/etc/k3semu/version", []byte("v1.25.6+k3s1\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		t.Cleanup(func() {
			for _, n := range c.Nodes() {
				_, _ = f.Exec(context.Background(), n.Name, "rm -f /etc/k3semu/version")
			}
		})
		check(t, 3, []string{"v1.25.6+k3s1 is too old"}, "-i", f.InventoryPath())
	})

	// The primary's disk is full where fleetcert keeps its files (a small
	// tmpfs, filled): refused before the lock, nothing written anywhere.
	t.Run("primary disk full", func(t *testing.T) {
		dir := path.Join(s.DataDir, "server/fleetcert")
		fill := "mkdir -p " + dir + " && mount -t tmpfs -o size=64k tmpfs " + dir +
			" && (dd if=/dev/zero of=" + dir + "/fill bs=4k count=64 2>/dev/null; true)"
		if r, err := f.Exec(ctx, s.Name, fill); err != nil || r.ExitCode != 0 {
			t.Fatalf("fill %s: %v %+v", dir, err, r)
		}
		t.Cleanup(func() { _, _ = f.Exec(context.Background(), s.Name, "umount "+dir) })
		check(t, 3, []string{s.Name + ": 0 KiB free where fleetcert keeps its files"}, "-i", f.InventoryPath())
	})

	// Consent: no terminal and no --yes is a refusal; on a terminal
	// (a pseudo-terminal from script(1)) the plan shows and "n" changes
	// nothing.
	t.Run("no terminal, no --yes", func(t *testing.T) {
		before := fleetChecksums(t, ctx, f, "ref")
		res := fleetcertAsIs(t, ctx, "rotate-ca", "-i", f.InventoryPath())
		if res.Code != 3 || !strings.Contains(res.Stderr, "pass --yes for unattended runs") {
			t.Errorf("want exit 3 and how to go on\n%s", res)
		}
		assertUnchanged(t, ctx, f, "ref", before, "a run without consent")
	})
	t.Run("terminal, answer n", func(t *testing.T) {
		before := fleetChecksums(t, ctx, f, "ref")
		line := fleetcertBinary(t) + " rotate-ca -i " + f.InventoryPath()
		cmd := exec.CommandContext(ctx, "script", "-qec", line, "/dev/null")
		cmd.Stdin = strings.NewReader("n\n")
		out, err := cmd.CombinedOutput()
		var exitErr *exec.ExitError
		if !errors.As(err, &exitErr) || exitErr.ExitCode() != 3 {
			t.Errorf("want exit 3 after answering n: %v\n%s", err, out)
		}
		for _, want := range []string{"Plan: rotate-ca on 1 cluster(s), 2 node(s)", "Proceed? [y/N]", "not confirmed"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("terminal output lacks %q:\n%s", want, out)
			}
		}
		assertUnchanged(t, ctx, f, "ref", before, "a run answered n")
	})

	t.Run("node not in the inventory", func(t *testing.T) {
		inv := writeInventory(t, f, "ref", []*harness.Node{s}, nil)
		check(t, 3, []string{"node " + a.Name + " is in the cluster but not in the inventory", "--allow-unlisted-nodes"}, "-i", inv)
		// The override lets the run go on (a dry run here, to keep the
		// cluster as it is for the next cases).
		res := fleetcert(t, ctx, "rotate-ca", "-i", inv, "--allow-unlisted-nodes", "--dry-run", "-o", "json")
		if res.Code != 0 {
			t.Errorf("--allow-unlisted-nodes --dry-run: want exit 0\n%s", res)
		}
	})

	t.Run("cluster locked by another run", func(t *testing.T) {
		now := time.Now().UTC()
		lock, _ := json.Marshal(map[string]any{"owner": "ops-laptop", "pid": 4242, "runId": "20260101T000000Z-0badc0",
			"command": "rotate-ca", "created": now, "expires": now.Add(10 * time.Minute)})
		lockFile := path.Join(s.DataDir, "server/fleetcert/lock")
		if err := f.WriteFile(ctx, s.Name, lockFile, lock, 0o600); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _, _ = f.Exec(context.Background(), s.Name, "rm -f "+lockFile) })
		check(t, 3, []string{"20260101T000000Z-0badc0", "ops-laptop"}, "-i", f.InventoryPath())
	})

	// The same, with a real first run: it holds the lock (and its
	// unfinished run state) while it waits for an agent that hangs at
	// start. A second run of the same command must not take the cluster
	// over as if it were resuming a dead run.
	t.Run("second run while the first runs", func(t *testing.T) {
		if err := f.WriteFile(ctx, a.Name, "/etc/k3semu/fault", []byte("hang-start\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		clear := func() { _ = f.WriteFile(context.Background(), a.Name, "/etc/k3semu/fault", nil, 0o644) }
		t.Cleanup(clear)
		preRun := unitStart(t, ctx, f, a)
		waiting := make(chan string, 1)
		var once sync.Once
		first := startFleetcert(t, ctx, func(l logLine, _ string) {
			if l.Node == a.Name && l.Phase == "agents" && strings.HasPrefix(l.Msg, "restart ") {
				once.Do(func() { waiting <- l.Run })
			}
		}, "rotate-ca", "-i", f.InventoryPath(), "-o", "json", "--log-format", "json", "--health-timeout", "2m")
		var runID string
		select {
		case runID = <-waiting:
		case <-time.After(90 * time.Second):
			clear()
			t.Fatalf("the first run never reached the agent:\n%s", first.wait(t))
		}
		// The first run's restart of the agent has taken effect.
		agentStart := unitStart(t, ctx, f, a)
		for deadline := time.Now().Add(30 * time.Second); (agentStart == preRun || strings.Contains(agentStart, "MainPID=0\n")) && time.Now().Before(deadline); {
			time.Sleep(200 * time.Millisecond)
			agentStart = unitStart(t, ctx, f, a)
		}
		second := fleetcert(t, ctx, "rotate-ca", "-i", f.InventoryPath(), "-o", "json", "--health-timeout", "20s")
		if second.Code != 3 || !strings.Contains(second.Stdout+second.Stderr, runID) {
			t.Errorf("a second run while run %s is live: want exit 3 naming it\n%s", runID, second)
		}
		// The report lists the lock it tried to take (every change is
		// recorded before it is attempted); nothing else may be there.
		for _, ch := range second.report(t).Changes {
			if ch.Phase != "lock" {
				t.Errorf("the second run made a change: %+v", ch)
			}
		}
		if got := unitStart(t, ctx, f, a); got != agentStart {
			t.Errorf("the second run restarted the agent the first one waits for:\n before: %s\n after:  %s", agentStart, got)
		}
		clear() // the hung agent start goes on; the first run finishes
		res := first.wait(t)
		if res.Code != 0 {
			t.Errorf("the first run failed:\n%s", res)
		}
	})
}

// ---- small helpers -------------------------------------------------------

// heartbeatAs sends an agent heartbeat (POST /v1-k3s/heartbeat, as the
// emulated kubelet does) to a server through an SSH tunnel, trusting only
// serverCA and authenticating with the given client cert: success means
// each side verified the other's certificate.
func heartbeatAs(ctx context.Context, f *harness.Fleet, server *harness.Node, serverCA, certPEM, keyPEM []byte) error {
	conn, err := sshClient(f, server)
	if err != nil {
		return err
	}
	defer conn.Close()
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(serverCA) {
		return errors.New("no CA in the old bundle")
	}
	client := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
		DialContext: func(context.Context, string, string) (net.Conn, error) {
			return conn.Dial("tcp", "127.0.0.1:6443")
		},
		TLSClientConfig:   &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, ServerName: server.Name},
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+server.Name+":6443/v1-k3s/heartbeat",
		strings.NewReader(`{"roles":"<none>","version":"v1.33.5+k3s1"}`))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("heartbeat: %s %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

func mustRead(t *testing.T, ctx context.Context, f *harness.Fleet, node, p string) []byte {
	t.Helper()
	b, err := f.ReadFile(ctx, node, p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// chainsTo reports whether the first cert of bundle verifies with the
// first cert of anchor as the only root (the rest of bundle as
// intermediates).
func chainsTo(t *testing.T, bundle, anchor []byte) bool {
	t.Helper()
	certs := parseCerts(t, bundle)
	roots := x509.NewCertPool()
	roots.AddCert(parseCerts(t, anchor)[0])
	inters := x509.NewCertPool()
	for _, c := range certs[1:] {
		inters.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}

func parseCerts(t *testing.T, data []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for _, b := range pemBlocksOfType(data, "CERTIFICATE") {
		c, err := x509.ParseCertificate(b)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		t.Fatal("no certificate in bundle")
	}
	return out
}

// pemBlocks returns the DER of every PEM block.
func pemBlocks(data []byte) [][]byte { return pemBlocksOfType(data, "") }

func pemBlocksOfType(data []byte, typ string) [][]byte {
	var out [][]byte
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return out
		}
		if typ == "" || b.Type == typ {
			out = append(out, b.Bytes)
		}
	}
}

// writeCA writes ca's certificate and key into dir as name.pem and
// name.key and returns the file paths.
func writeCA(t *testing.T, dir, name string, ca *certtest.Cert) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, ca.KeyPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// durationOf is how long the cluster took, from the report when there is
// one.
func durationOf(r fcResult) time.Duration {
	var rep struct {
		Clusters []struct {
			Started  time.Time `json:"started"`
			Finished time.Time `json:"finished"`
		} `json:"clusters"`
	}
	if json.Unmarshal([]byte(r.Stdout), &rep) != nil || len(rep.Clusters) == 0 {
		return 0
	}
	return rep.Clusters[0].Finished.Sub(rep.Clusters[0].Started).Round(100 * time.Millisecond)
}
