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

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/orchestrator/fleettest"
)

// Commands run in-process against orchestrator/fleettest: the fake fleet
// stands in for SSH and a test flag for the terminal.

// fakeFleet is a fake fleet (two clusters, a server and an agent each)
// and an inventory file naming its nodes.
func fakeFleet(t *testing.T) (*fleettest.Fleet, string) {
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

// fleetFiles is every file of every fake node, for "nothing changed".
func fleetFiles(fl *fleettest.Fleet) map[string]map[string]string {
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

func sameFiles(a, b map[string]map[string]string) bool {
	for id := range a {
		if !maps.Equal(a[id], b[id]) {
			return false
		}
	}
	return len(a) == len(b)
}

// runFake runs fleetcert in-process against the fake fleet, with a
// terminal (tty) or without, and stdin as the operator's answer.
func runFake(fl *fleettest.Fleet, tty bool, stdin string, args ...string) (code int, stdout, stderr string) {
	return runIn(fakeSystem(fl, tty, stdin), args...)
}

// fakeSystem is the system of a run against the fake fleet: buffers for
// stdout and stderr, stdin holding the operator's answer, and a person at
// a terminal or not (tty). Tests that interrupt the run set its signals.
func fakeSystem(fl *fleettest.Fleet, tty bool, stdin string) system {
	return system{stdin: strings.NewReader(stdin), stdout: new(bytes.Buffer), stderr: new(bytes.Buffer),
		stdinTTY: tty, stderrTTY: tty, dial: fl.Dial}
}

// runIn runs one command line in s (made by fakeSystem) and returns its
// exit code and what it wrote.
func runIn(s system, args ...string) (code int, stdout, stderr string) {
	code = (&app{system: s}).run(args)
	return code, s.stdout.(*bytes.Buffer).String(), s.stderr.(*bytes.Buffer).String()
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
