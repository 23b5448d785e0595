package cmd

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/orchestrator/fleettest"
)

// consentFleet is a fake fleet (two clusters, a server and an agent each)
// and an inventory file naming its nodes.
func consentFleet(t *testing.T) (*fleettest.Fleet, string) {
	t.Helper()
	m, err := fleettest.Default()
	if err != nil {
		t.Fatal(err)
	}
	fl := fleettest.New(m, fleettest.Spec{Clusters: 2, Servers: 1, Agents: 1})
	var b strings.Builder
	b.WriteString("clusters:\n")
	for _, c := range fl.Inventory {
		fmt.Fprintf(&b, "  - name: %s\n", c.Name)
		for _, role := range []inventory.Role{inventory.Server, inventory.Agent} {
			fmt.Fprintf(&b, "    %ss:\n", role)
			for _, n := range c.Nodes {
				if n.Role == role {
					fmt.Fprintf(&b, "      - {name: %s, host: %s}\n", n.Name, n.Host)
				}
			}
		}
	}
	inv := filepath.Join(t.TempDir(), "hosts.yaml")
	if err := os.WriteFile(inv, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return fl, inv
}

// snapshot is every file of every fake node, for "nothing changed".
func snapshot(fl *fleettest.Fleet) map[string]map[string]string {
	out := map[string]map[string]string{}
	for _, n := range fl.Nodes() {
		files := map[string]string{}
		for p, f := range fl.Node(n.ID()).Files() {
			files[p] = string(f.Data)
		}
		out[n.ID()] = files
	}
	return out
}

func unchanged(a, b map[string]map[string]string) bool {
	for id := range a {
		if !maps.Equal(a[id], b[id]) {
			return false
		}
	}
	return len(a) == len(b)
}

// runConsent runs fleetcert in-process against the fake fleet, with a
// terminal (tty) or without, and stdin as the operator's answer.
func runConsent(fl *fleettest.Fleet, tty bool, stdin string, args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	a := &app{stdin: strings.NewReader(stdin), stdout: &out, stderr: &errb, dial: fl.Dial, terminal: func() bool { return tty }}
	code = a.run(args)
	return code, out.String(), errb.String()
}

// TestConsent: a mutating command shows its plan on the terminal and asks;
// anything but y/yes (or end of input) exits 3 with nothing changed; with
// no terminal and no --yes it refuses; --yes and "y" go on.
func TestConsent(t *testing.T) {
	for _, tc := range []struct {
		name     string
		tty      bool
		answer   string
		args     []string
		wantCode int
		changed  bool
	}{
		{"terminal, answer n", true, "n\n", nil, ExitRefused, false},
		{"terminal, end of input", true, "", nil, ExitRefused, false},
		{"terminal, anything else", true, "sure\n", nil, ExitRefused, false},
		{"no terminal, no --yes", false, "y\n", nil, ExitRefused, false},
		{"dry run never asks", false, "", []string{"--dry-run"}, ExitOK, false},
		{"terminal, answer Y", true, "Y\n", nil, ExitOK, true},
		{"no terminal, --yes", false, "", []string{"--yes"}, ExitOK, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fl, inv := consentFleet(t)
			before := snapshot(fl)
			args := append([]string{"rotate-ca", "-i", inv, "-o", "json", "--health-timeout", "20s"}, tc.args...)
			code, stdout, stderr := runConsent(fl, tc.tty, tc.answer, args...)
			if code != tc.wantCode {
				t.Fatalf("exit %d, want %d\nstderr:\n%s", code, tc.wantCode, stderr)
			}
			if got := !unchanged(before, snapshot(fl)); got != tc.changed {
				t.Errorf("nodes changed: %v, want %v", got, tc.changed)
			}
			asked := strings.Contains(stderr, "Proceed? [y/N]")
			if asked != (tc.tty && !contains(tc.args, "--yes") && !contains(tc.args, "--dry-run")) {
				t.Errorf("asked: %v\nstderr:\n%s", asked, stderr)
			}
			if asked && !strings.Contains(stderr, "Plan: rotate-ca on 2 cluster(s), 4 node(s)") {
				t.Errorf("no plan before the question:\n%s", stderr)
			}
			if !tc.tty && !contains(tc.args, "--yes") && !contains(tc.args, "--dry-run") && !strings.Contains(stderr, "pass --yes for unattended runs") {
				t.Errorf("the refusal does not say how to go on:\n%s", stderr)
			}
			// With -o json, stdout is the JSON document alone.
			if code == ExitOK && !strings.HasPrefix(strings.TrimSpace(stdout), "{") {
				t.Errorf("stdout is not only JSON:\n%s", stdout)
			}
			if strings.Contains(stdout, "Proceed?") || strings.Contains(stdout, "Plan:") {
				t.Errorf("the plan or question reached stdout:\n%s", stdout)
			}
		})
	}
}

// TestPlanSummary: the plan names the waves, each cluster's mode and hash
// change, what restarts, how many files change and the gates; -v lists the
// files. The same plan is what --dry-run prints.
func TestPlanSummary(t *testing.T) {
	fl, inv := consentFleet(t)
	_, _, stderr := runConsent(fl, true, "n\n", "rotate-ca", "-i", inv, "--waves", "1,100%")
	for _, want := range []string{
		"wave 1: 1 cluster(s)", "wave 2: 1 cluster(s)",
		"c0001: cross-sign, token hash " + fl.Material.Hash[:12] + " -> a new one",
		"restarts 1 server(s) one at a time, then 1 agent(s); 2 file(s) change",
		"gates after each restart: servers: restarted, serve the new CA",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("plan lacks %q:\n%s", want, stderr)
		}
	}
	if strings.Contains(stderr, "file c0001-a1:/etc/systemd/system/k3s-agent.service.env") {
		t.Errorf("files listed without -v:\n%s", stderr)
	}
	// The whole plan, compared with its golden file (the fleet's random
	// CA hash replaced).
	plan := strings.ReplaceAll(stderr, fl.Material.Hash[:12], "<old-hash>")
	golden := filepath.Join("testdata", "plan-rotate-ca.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(plan), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if want, err := os.ReadFile(golden); err != nil || string(want) != plan {
		t.Errorf("plan differs from %s (%v; -update rewrites it):\n%s", golden, err, plan)
	}
	_, _, stderr = runConsent(fl, true, "n\n", "rotate-ca", "-i", inv, "-v")
	if !strings.Contains(stderr, "file c0001-a1:/etc/systemd/system/k3s-agent.service.env") {
		t.Errorf("-v does not list the files:\n%s", stderr)
	}
	code, stdout, _ := runConsent(fl, false, "", "rotate-ca", "-i", inv, "--dry-run")
	if code != ExitOK || !strings.Contains(stdout, "Plan: rotate-ca on 2 cluster(s), 4 node(s)") ||
		!strings.Contains(stdout, "file c0002-s1:/etc/systemd/system/k3s.service.env") {
		t.Errorf("--dry-run (exit %d) does not print the plan:\n%s", code, stdout)
	}
}

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

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestCheckTableScalesWithTheFleet: over 1000 healthy clusters, check's
// default table is the fleet summary alone; --all lists every certificate.
func TestCheckTableScalesWithTheFleet(t *testing.T) {
	m, err := fleettest.Default()
	if err != nil {
		t.Fatal(err)
	}
	fl := fleettest.New(m, fleettest.Spec{Clusters: 1000, Servers: 1})
	var b strings.Builder
	b.WriteString("clusters:\n")
	for _, c := range fl.Inventory {
		fmt.Fprintf(&b, "  - {name: %s, servers: [{name: %s, host: %s}]}\n", c.Name, c.Nodes[0].Name, c.Nodes[0].Host)
	}
	inv := filepath.Join(t.TempDir(), "hosts.yaml")
	if err := os.WriteFile(inv, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := runConsent(fl, false, "", "check", "-i", inv, "--concurrency", "64")
	if code != ExitOK {
		t.Fatalf("exit %d\n%s\n%s", code, stderr, out)
	}
	if lines := strings.Count(out, "\n"); lines > 40 || !strings.Contains(out, "FLEET: 1000 cluster(s), 1000/1000 node(s) checked") {
		t.Errorf("%d lines for a healthy fleet of 1000 clusters, want at most 40:\n%.2000s", lines, out)
	}
	_, all, _ := runConsent(fl, false, "", "check", "-i", inv, "--concurrency", "64", "--all")
	if strings.Count(all, "\n") < 10000 || strings.Count(all, "CLUSTER c") != 1000 {
		t.Errorf("--all lists %d lines, %d clusters", strings.Count(all, "\n"), strings.Count(all, "CLUSTER c"))
	}
}

// TestRolloutTableShapedPerCommand: leaf renewal changes no CA, so its
// summary has no mode or hash columns; rotate-ca's has them.
func TestRolloutTableShapedPerCommand(t *testing.T) {
	fl, inv := consentFleet(t)
	_, leaf, stderr := runConsent(fl, false, "", "rotate", "-i", inv, "--dry-run")
	if !strings.Contains(leaf, "CLUSTER  OUTCOME") || strings.Contains(leaf, "OLD HASH") || strings.Contains(leaf, "MODE") {
		t.Errorf("rotate summary:\n%s\n%s", leaf, stderr)
	}
	_, ca, _ := runConsent(fl, false, "", "rotate-ca", "-i", inv, "--dry-run")
	if !strings.Contains(ca, "OLD HASH") || !strings.Contains(ca, "MODE") {
		t.Errorf("rotate-ca summary:\n%s", ca)
	}
}

// TestCheckClockSkew: a node whose clock is off by more than
// --max-clock-skew (default 30 s) is a clockSkew finding (exit 1).
func TestCheckClockSkew(t *testing.T) {
	fl, inv := consentFleet(t)
	fl.Node("c0002/c0002-a1").ClockOffset = 10 * time.Minute
	code, out, stderr := runConsent(fl, false, "", "check", "-i", inv)
	if code != ExitFailed || !strings.Contains(out, "FINDING clockSkew: c0002-a1: the node's clock is") || !strings.Contains(out, "ahead of the controller's (more than 30s)") {
		t.Errorf("exit %d\n%s\n%s", code, out, stderr)
	}
	if code, out, _ := runConsent(fl, false, "", "check", "-i", inv, "--max-clock-skew", "15m"); code != ExitOK {
		t.Errorf("--max-clock-skew 15m: exit %d\n%s", code, out)
	}
}
