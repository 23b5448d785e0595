package cmd

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetcert/fleetcert/orchestrator/fleettest"
)

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
	code, out, stderr := runFake(fl, false, "", "check", "-i", inv, "--concurrency", "64")
	if code != ExitOK {
		t.Fatalf("exit %d\n%s\n%s", code, stderr, out)
	}
	if lines := strings.Count(out, "\n"); lines > 40 || !strings.Contains(out, "FLEET: 1000 cluster(s), 1000/1000 node(s) checked") {
		t.Errorf("%d lines for a healthy fleet of 1000 clusters, want at most 40:\n%.2000s", lines, out)
	}
	_, all, _ := runFake(fl, false, "", "check", "-i", inv, "--concurrency", "64", "--all")
	if strings.Count(all, "\n") < 10000 || strings.Count(all, "CLUSTER c") != 1000 {
		t.Errorf("--all lists %d lines, %d clusters", strings.Count(all, "\n"), strings.Count(all, "CLUSTER c"))
	}
}

// TestCheckClockSkew: a node whose clock is off by more than
// --max-clock-skew (default 30 s) is a clockSkew finding (exit 1).
func TestCheckClockSkew(t *testing.T) {
	fl, inv := fakeFleet(t)
	fl.Node("c0002/c0002-a1").ClockOffset = 10 * time.Minute
	code, out, stderr := runFake(fl, false, "", "check", "-i", inv)
	if code != ExitFailed || !strings.Contains(out, "FINDING clockSkew: c0002-a1: the node's clock is") || !strings.Contains(out, "ahead of the controller's (more than 30s)") {
		t.Errorf("exit %d\n%s\n%s", code, out, stderr)
	}
	if code, out, _ := runFake(fl, false, "", "check", "-i", inv, "--max-clock-skew", "15m"); code != ExitOK {
		t.Errorf("--max-clock-skew 15m: exit %d\n%s", code, out)
	}
}
