package cmd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/fleetcert/fleetcert/inventory"
	"github.com/fleetcert/fleetcert/k3s"
	"github.com/fleetcert/fleetcert/orchestrator"
	"github.com/fleetcert/fleetcert/orchestrator/fleettest"
	"github.com/fleetcert/fleetcert/remote"
)

// Commands run in-process against orchestrator/fleettest: the fake fleet
// stands in for SSH, test flags for the terminal, a channel for signals.

// fakeFleet is a fake fleet (two clusters, a server and an agent each)
// and an inventory file naming its nodes.
func fakeFleet(t *testing.T) (*fleettest.Fleet, string) {
	t.Helper()
	return fakeFleetOf(t, fleettest.Spec{Clusters: 2, Servers: 1, Agents: 1})
}

// fakeFleetOf is fakeFleet of another shape. Its inventory names the
// nodes only; tests that select clusters by label write their own with
// fakeInventory.
func fakeFleetOf(t *testing.T, spec fleettest.Spec) (*fleettest.Fleet, string) {
	t.Helper()
	m, err := fleettest.Default()
	if err != nil {
		t.Fatal(err)
	}
	fl := fleettest.New(m, spec)
	plain := slices.Clone(fl.Inventory)
	for i := range plain {
		plain[i].Labels = nil
	}
	return fl, fakeInventory(t, plain)
}

// fakeInventory writes an inventory file listing clusters (in their
// order, with their labels) and their nodes.
func fakeInventory(t *testing.T, clusters []inventory.Cluster) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("clusters:\n")
	for _, c := range clusters {
		fmt.Fprintf(&b, "  - name: %s\n", c.Name)
		if len(c.Labels) > 0 {
			var kv []string
			for _, k := range slices.Sorted(maps.Keys(c.Labels)) {
				kv = append(kv, k+": "+c.Labels[k])
			}
			fmt.Fprintf(&b, "    labels: {%s}\n", strings.Join(kv, ", "))
		}
		for _, role := range []inventory.Role{inventory.Server, inventory.Agent} {
			fmt.Fprintf(&b, "    %ss:\n", role)
			for _, n := range c.Nodes {
				if n.Role == role {
					fmt.Fprintf(&b, "      - {name: %s, host: %s}\n", n.Name, n.Host)
				}
			}
		}
	}
	return writeInventory(t, b.String())
}

// fleetFiles is every file of every fake node, for "nothing changed".
func fleetFiles(fl *fleettest.Fleet) map[string]map[string]string {
	out := map[string]map[string]string{}
	for _, n := range fl.Nodes() {
		out[n.ID()] = nodeFiles(fl, n.ID())
	}
	return out
}

// clusterFiles is fleetFiles of one cluster.
func clusterFiles(fl *fleettest.Fleet, cluster string) map[string]map[string]string {
	out := map[string]map[string]string{}
	for _, n := range fl.Nodes() {
		if n.Cluster == cluster {
			out[n.ID()] = nodeFiles(fl, n.ID())
		}
	}
	return out
}

func nodeFiles(fl *fleettest.Fleet, id string) map[string]string {
	files := map[string]string{}
	for p, f := range fl.Node(id).Files() {
		files[p] = string(f.Data)
	}
	return files
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

// runRollout runs a rollout command in s with --report and returns its
// exit code, output and report (nil when none was written, as for bad
// usage).
func runRollout(t *testing.T, s system, args ...string) (code int, stdout, stderr string, rep *orchestrator.FleetReport) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "report.json")
	code, stdout, stderr = runIn(s, append(args, "--report", file)...)
	if data, err := os.ReadFile(file); err == nil {
		rep = rolloutReport(t, string(data))
	}
	return code, stdout, stderr, rep
}

// interruptAt delivers sig to a run in s when node is first sent a script
// containing step, and holds that script until the run's context is
// cancelled, so the interrupt lands at exactly that step. The script then
// fails as the cancelled call it is.
func interruptAt(t *testing.T, s *system, node *fleettest.Node, step string, sig os.Signal) {
	sigs := make(chan os.Signal, 1)
	s.signals = sigs
	var once sync.Once
	node.BeforeRun = func(ctx context.Context, script string) *remote.Result {
		if !strings.Contains(script, step) {
			return nil
		}
		once.Do(func() {
			sigs <- sig
			select {
			case <-ctx.Done():
			case <-time.After(time.Minute): // a guard, not a wait: the cancel comes at once
				t.Errorf("%s never reached the run at %q", sig, step)
			}
		})
		return nil
	}
}

// failAt makes node answer every script containing step with a failure,
// as k3s or systemd would fail it.
func failAt(node *fleettest.Node, step, stderr string) {
	node.BeforeRun = func(_ context.Context, script string) *remote.Result {
		if strings.Contains(script, step) {
			return &remote.Result{ExitCode: 1, Stderr: []byte(stderr + "\n")}
		}
		return nil
	}
}

// rolloutReport parses a rollout's JSON report: stdout of -o json, or
// the --report file.
func rolloutReport(t *testing.T, data string) *orchestrator.FleetReport {
	t.Helper()
	var rep orchestrator.FleetReport
	if err := json.Unmarshal([]byte(data), &rep); err != nil {
		t.Fatalf("not a rollout report: %v\n%s", err, data)
	}
	if rep.SchemaVersion != orchestrator.SchemaVersion {
		t.Errorf("schemaVersion %d", rep.SchemaVersion)
	}
	return &rep
}

// outcomes sums a report up as "c0001=done c0002=not-started".
func outcomes(rep *orchestrator.FleetReport) string {
	var s []string
	for _, c := range rep.Clusters {
		s = append(s, c.Cluster+"="+c.Outcome)
	}
	return strings.Join(s, " ")
}

// waves sums a report's waves up as "c0002,c0003 c0001".
func waves(rep *orchestrator.FleetReport) string {
	var s []string
	for _, w := range rep.Waves {
		s = append(s, strings.Join(w.Clusters, ","))
	}
	return strings.Join(s, " ")
}

// primary is the fake primary server of a cluster and its layout.
func primary(fl *fleettest.Fleet, cluster string) (*fleettest.Node, k3s.Layout) {
	n := fl.Node(cluster + "/" + cluster + "-s1")
	in := n.Inventory()
	return n, k3s.Layout{Role: k3s.RoleServer, DataDir: in.DataDir, ConfigFile: in.ConfigFile, Unit: in.Service}
}

// runState is the unfinished run recorded on a cluster's primary (nil
// for none), or with last the last finished one.
func runState(t *testing.T, fl *fleettest.Fleet, cluster string, last bool) *orchestrator.RunState {
	t.Helper()
	n, l := primary(fl, cluster)
	name := "run.json"
	if last {
		name = "last-run.json"
	}
	f, ok := n.File(path.Join(l.FleetcertDir(), name))
	if !ok {
		return nil
	}
	var s orchestrator.RunState
	if err := json.Unmarshal(f.Data, &s); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return &s
}

// golden compares got with testdata/name; -update rewrites the file.
func golden(t *testing.T, name, got string) {
	t.Helper()
	file := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(file, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (go test ./cmd -update writes it)", err)
	}
	if string(want) != got {
		t.Errorf("output differs from %s (-update rewrites it after review):\n%s", file, got)
	}
}

var (
	jsonTime     = regexp.MustCompile(`"(started|finished|updated|created|expires)": "[^"]*"`)
	jsonDuration = regexp.MustCompile(`"durationNs": \d+`)
	leafBackup   = regexp.MustCompile(`/tls-\d+`)
	cellGap      = regexp.MustCompile(`  +`)
)

// scrub makes a run's output comparable with a golden file: run ids, the
// fake fleet's CA hash and the new one every rotate-ca makes, times,
// durations and k3s's tls-<unix> backups become placeholders.
func scrub(s string, fl *fleettest.Fleet, reps ...*orchestrator.FleetReport) string {
	var pairs []string
	for _, rep := range reps {
		pairs = append(pairs, rep.RunID, "<run-id>")
		for _, c := range rep.Clusters {
			pairs = append(pairs, c.RunID, "<run-id>")
			if c.TargetHash != "" && c.TargetHash != fl.Material.Hash {
				pairs = append(pairs, c.TargetHash, "<new-hash>", c.TargetHash[:12], "<new-hash>")
			}
		}
	}
	pairs = append(pairs, fl.Material.Hash, "<old-hash>", fl.Material.Hash[:12], "<old-hash>")
	s = strings.NewReplacer(pairs...).Replace(s)
	s = jsonTime.ReplaceAllString(s, `"$1": "<time>"`)
	s = jsonDuration.ReplaceAllString(s, `"durationNs": 0`)
	s = leafBackup.ReplaceAllString(s, "/tls-<unix>")
	return retable(s, "DURATION", "<took>")
}

// retable aligns every table of s again (a header line starting with
// CLUSTER, then rows with cells two or more blanks apart), after scrub
// changed the widths of its cells, and replaces the cells of column with
// with.
func retable(s, column, with string) string {
	lines := strings.Split(s, "\n")
	for i := 0; i < len(lines); i++ {
		if !strings.HasPrefix(lines[i], "CLUSTER  ") {
			continue
		}
		col := slices.Index(cellGap.Split(lines[i], -1), column)
		var b strings.Builder
		w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		j := i
		for ; j < len(lines) && strings.Contains(lines[j], "  "); j++ {
			cells := cellGap.Split(lines[j], -1)
			if j > i && col >= 0 && col < len(cells) {
				cells[col] = with
			}
			fmt.Fprintln(w, strings.Join(cells, "\t"))
		}
		w.Flush()
		lines = slices.Replace(lines, i, j, strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")...)
		i = j - 1
	}
	return strings.Join(lines, "\n")
}

// isTokenText reports whether a file's text may hold a secure token: it
// mentions K10 and is not PEM, whose base64 can spell K10 by chance.
func isTokenText(data string) bool {
	return strings.Contains(data, "K10") && !strings.Contains(data, "-----BEGIN")
}
