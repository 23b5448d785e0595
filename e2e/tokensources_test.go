package e2e

import (
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/fleetcert/fleetcert/e2e/harness"
)

// TestRotateCATokenSources: tokens where nodes configured by hand keep
// them, in places install.sh never writes but systemd and k3s read: a
// runtime drop-in (systemctl edit --runtime), a prefix drop-in
// (k3s-.service.d), a template unit's instance, a config file chosen by
// K3S_CONFIG_FILE and one chosen by --config, a dotfile in config.yaml.d,
// and a token file that starts with a no-break space. facts names each
// source and the one k3s uses; rotate-ca rewrites every one, the cluster
// ends healthy and check passes. One agent has a Type=exec unit, as
// install.sh wrote them before 2022.
func TestRotateCATokenSources(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 12*time.Minute)
	f := startRotFleet(t, ctx, harness.ClusterSpec{
		Name:    "src",
		Servers: []harness.NodeSpec{{Token: harness.SecureToken, TokenIn: []harness.TokenPlace{harness.InRuntimeDropIn}}},
		Agents: []harness.NodeSpec{
			{TokenIn: []harness.TokenPlace{harness.InPrefixDropIn, harness.InConfigDotDropIn}},
			{Name: "src-edge", Unit: "k3s-agent@edge", Template: true, TokenIn: []harness.TokenPlace{harness.InConfigByEnv}},
			{TokenIn: []harness.TokenPlace{harness.InConfigByFlag, harness.InTokenFileNBSP}, LegacyExecType: true},
		},
	})
	c := f.Cluster("src")
	oldHash := clusterHash(t, ctx, f, "src")
	assertTokensPin(t, ctx, f, "src", oldHash)

	// facts finds every planted source and says which one k3s uses.
	facts := factsJSON(t, ctx, f)
	for _, n := range c.Nodes() {
		got := facts[n.Name]
		if got.TokenProblem != "" {
			t.Errorf("%s: token problem: %s", n.Name, got.TokenProblem)
		}
		for _, file := range tokenFiles(n) {
			found := false
			for _, s := range got.Tokens {
				found = found || (s.File == file && s.Class == "secure" && s.Problem == "")
			}
			if !found {
				t.Errorf("%s: facts lists no secure token in %s: %+v", n.Name, file, got.Tokens)
			}
		}
		effective := 0
		for _, s := range got.Tokens {
			if s.Effective == "token" {
				effective++
			}
		}
		if effective != 1 {
			t.Errorf("%s: %d sources marked as the token k3s uses, want 1: %+v", n.Name, effective, got.Tokens)
		}
	}
	// k3s's precedence: --token-file beats the config file's token.
	for _, s := range facts[c.Agents[2].Name].Tokens {
		if s.Effective == "token" && s.Kind != "token-file" {
			t.Errorf("%s: k3s uses the token file, facts says %s %s", c.Agents[2].Name, s.Kind, s.File)
		}
	}

	res := fleetcert(t, ctx, "rotate-ca", "-i", f.InventoryPath(), "-o", "json", "--health-timeout", "3m")
	if res.Code != 0 {
		t.Fatalf("rotate-ca failed:\n%s", res)
	}
	newHash := clusterHash(t, ctx, f, "src")
	if newHash == oldHash {
		t.Fatalf("the served CA hash did not change (%s)", oldHash)
	}
	assertTokensPin(t, ctx, f, "src", newHash)
	assertAllReady(t, ctx, f, "src")
	assertNoMismatchLogged(t, ctx, f, c.Nodes()...)
	if r := fleetcert(t, ctx, "check", "-i", f.InventoryPath()); r.Code != 0 {
		t.Errorf("check after the rotation: want exit 0\n%s", r)
	}
}

// TestRotateCARefusesUnaccountedTokens: a token only systemd's manager
// environment holds (systemctl set-environment) and a token behind a
// wrapper-script ExecStart cannot be rewritten with certainty: rotate-ca
// refuses the cluster (exit 3), naming the node and the source, before
// anything on any node changes.
func TestRotateCARefusesUnaccountedTokens(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 10*time.Minute)
	f := startRotFleet(t, ctx, harness.ClusterSpec{
		Name:    "unacc",
		Servers: []harness.NodeSpec{{}},
		Agents:  []harness.NodeSpec{{}, {}},
	})
	c := f.Cluster("unacc")
	env, wrapped := c.Agents[0], c.Agents[1]

	// The first agent's token moves from its env file to the manager.
	mustExec(t, ctx, f, env.Name, "systemctl set-environment K3S_TOKEN="+shellQuote(env.Token)+
		" && sed -i '/^K3S_TOKEN=/d' /etc/systemd/system/k3s-agent.service.env")
	// The second agent's unit runs a wrapper that passes its own flags.
	mustExec(t, ctx, f, wrapped.Name, `mkdir -p /etc/systemd/system/k3s-agent.service.d &&
printf '#!/bin/sh\nexec /usr/local/bin/k3s agent "$@"\n' > /usr/local/bin/k3s-wrapper.sh && chmod 755 /usr/local/bin/k3s-wrapper.sh &&
printf '[Service]\nExecStart=\nExecStart=/usr/local/bin/k3s-wrapper.sh\n' > /etc/systemd/system/k3s-agent.service.d/10-wrapper.conf &&
systemctl daemon-reload`)

	before := fleetChecksums(t, ctx, f, "unacc")
	res := fleetcert(t, ctx, "rotate-ca", "-i", f.InventoryPath(), "--health-timeout", "1m")
	if res.Code != 3 {
		t.Errorf("want exit 3 (refused)\n%s", res)
	}
	out := res.Stdout + res.Stderr
	for _, want := range []string{
		env.Name + ": ", "systemd's manager environment",
		wrapped.Name + ": ", `"/usr/local/bin/k3s-wrapper.sh", not k3s server or k3s agent`,
		"10-wrapper.conf",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q\n%s", want, res)
		}
	}
	if strings.Contains(out, creds(env.Token)) {
		t.Errorf("the output shows a token's secret")
	}
	assertUnchanged(t, ctx, f, "unacc", before, "a refused run")
}

// factsNode is what the token-sources tests read of `facts -o json`.
type factsNode struct {
	Node         string `json:"node"`
	TokenProblem string `json:"tokenProblem"`
	Tokens       []struct {
		File      string `json:"file"`
		Kind      string `json:"kind"`
		Class     string `json:"class"`
		Problem   string `json:"problem"`
		Effective string `json:"effective"`
	} `json:"tokens"`
}

// factsJSON runs `fleetcert facts -o json` and returns the nodes by name.
func factsJSON(t *testing.T, ctx context.Context, f *harness.Fleet) map[string]factsNode {
	t.Helper()
	cmd := exec.CommandContext(ctx, fleetcertBinary(t), "facts", "-i", f.InventoryPath(), "-o", "json")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("facts: %v\n%s", err, out)
	}
	var nodes []factsNode
	if err := json.Unmarshal(envelope(t, out, "nodes"), &nodes); err != nil {
		t.Fatalf("facts output: %v\n%s", err, out)
	}
	byName := map[string]factsNode{}
	for _, n := range nodes {
		byName[n.Node] = n
	}
	return byName
}

// mustExec runs cmd on the node and returns its stdout, failing the test
// when it cannot run or exits non-zero.
func mustExec(t *testing.T, ctx context.Context, f *harness.Fleet, node, cmd string) string {
	t.Helper()
	r, err := f.Exec(ctx, node, cmd)
	if err == nil {
		err = r.Err()
	}
	if err != nil {
		t.Fatalf("%s: %s: %v", node, cmd, err)
	}
	return r.Stdout
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// envelope checks a JSON document's schemaVersion and returns its field
// key: facts, status and inventory list wrap their rows in one.
func envelope(t *testing.T, data []byte, key string) []byte {
	t.Helper()
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatalf("not a JSON object: %v\n%s", err, data)
	}
	if string(doc["schemaVersion"]) != "1" {
		t.Errorf("schemaVersion %s, want 1", doc["schemaVersion"])
	}
	return doc[key]
}
