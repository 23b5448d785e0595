package cmd

import (
	"context"
	"encoding/json"
	"path"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetcert/fleetcert/orchestrator"
	"github.com/fleetcert/fleetcert/orchestrator/fleettest"
	"github.com/fleetcert/fleetcert/remote"
)

// The rollout flags every mutating command shares, driven through the
// command line against the fake fleet.

// TestRolloutWaves: --waves, --order, --canary-selector and --shard decide
// which clusters run and in which waves, as the report (here of a dry run)
// lists them. The inventory lists c0003, c0002, c0001.
func TestRolloutWaves(t *testing.T) {
	fl, _ := fakeFleetOf(t, fleettest.Spec{Clusters: 3, Servers: 1})
	clusters := slices.Clone(fl.Inventory)
	slices.Reverse(clusters)
	zones := map[string]string{"c0001": "b", "c0002": "c", "c0003": "a"}
	for i, c := range clusters {
		clusters[i].Labels = map[string]string{"ring": c.Labels["ring"], "zone": zones[c.Name]}
	}
	inv := fakeInventory(t, clusters)
	plan := func(t *testing.T, args ...string) *orchestrator.FleetReport {
		t.Helper()
		code, out, stderr := runFake(fl, false, "", append([]string{"rotate-ca", "-i", inv, "--dry-run", "-o", "json"}, args...)...)
		if code != ExitOK {
			t.Fatalf("%v: exit %d\n%s", args, code, stderr)
		}
		return rolloutReport(t, out)
	}
	for _, tc := range []struct {
		args  []string
		waves string
	}{
		{nil, "c0003,c0002,c0001"},
		{[]string{"--waves", "1,100%"}, "c0003 c0002,c0001"},
		{[]string{"--waves", "1,2"}, "c0003 c0002,c0001"},
		{[]string{"--waves", "1", "--order", "name"}, "c0001 c0002 c0003"},
		{[]string{"--waves", "1", "--order", "label:zone"}, "c0003 c0001 c0002"},
		{[]string{"--canary-selector", "ring=canary"}, "c0001 c0003,c0002"},
		{[]string{"--canary-selector", "ring=canary", "--waves", "1"}, "c0001 c0003 c0002"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			rep := plan(t, tc.args...)
			if got := waves(rep); got != tc.waves {
				t.Errorf("waves %q, want %q", got, tc.waves)
			}
			if got := outcomes(rep); strings.Count(got, "=planned") != 3 {
				t.Errorf("outcomes %s", got)
			}
		})
	}
	// Two controllers with --shard 0/2 and 1/2 share the fleet: every
	// cluster in exactly one shard, the same one every time.
	seen := map[string]string{}
	for _, shard := range []string{"0/2", "1/2", "0/2"} {
		for _, c := range plan(t, "--shard", shard).Clusters {
			if prev, ok := seen[c.Cluster]; ok && prev != shard {
				t.Errorf("%s in shard %s and %s", c.Cluster, prev, shard)
			}
			seen[c.Cluster] = shard
		}
	}
	if len(seen) != 3 {
		t.Errorf("the shards cover %v, want all three clusters", seen)
	}
}

// TestRolloutFailureBudget: with --concurrency 1 clusters start one after
// another. By default (--max-failures 0) the first failure stops new
// clusters from starting (exit 1, the rest untouched, "not-started");
// --abandon then drops the failed run's state. --max-failures 1 tolerates
// one failed cluster and goes on.
func TestRolloutFailureBudget(t *testing.T) {
	spec := fleettest.Spec{Clusters: 3, Servers: 1}
	fl, inv := fakeFleetOf(t, spec)
	loadFails(fl)
	untouched := fleetFiles(fl)
	delete(untouched, "c0001/c0001-s1")
	code, out, stderr, rep := runRollout(t, fakeSystem(fl, false, ""), "rotate-ca", "-i", inv, "--yes", "--concurrency", "1")
	if code != ExitFailed || rep == nil {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
	if got := outcomes(rep); got != "c0001=failed c0002=not-started c0003=not-started" || rep.Stopped != "failure budget exceeded (1 failed)" {
		t.Errorf("outcomes %s, stopped %q", got, rep.Stopped)
	}
	now := fleetFiles(fl)
	delete(now, "c0001/c0001-s1")
	if !sameFiles(untouched, now) {
		t.Error("clusters not started were changed")
	}
	golden(t, "rollout-stopped.table.golden", scrub(out, fl, rep))

	// The failed run stopped before its material was loaded: --abandon
	// closes it and removes its staging directory.
	failed := runState(t, fl, "c0001", false)
	if failed == nil || failed.Loaded || failed.StageDir == "" {
		t.Fatalf("run state of the failed run: %+v", failed)
	}
	fl.Node("c0001/c0001-s1").BeforeRun = nil
	code, out, stderr, rep = runRollout(t, fakeSystem(fl, false, ""), "rotate-ca", "-i", inv, "--yes", "--cluster", "c0001", "--abandon")
	if code != ExitOK || rep == nil || outcomes(rep) != "c0001=abandoned" {
		t.Fatalf("--abandon: exit %d\n%s\n%s", code, out, stderr)
	}
	last := runState(t, fl, "c0001", true)
	if runState(t, fl, "c0001", false) != nil || last == nil || last.RunID != failed.RunID || last.Outcome != "abandoned" {
		t.Errorf("after --abandon: unfinished %+v, last %+v", runState(t, fl, "c0001", false), last)
	}
	for p := range fl.Node("c0001/c0001-s1").Files() {
		if strings.HasPrefix(p, failed.StageDir+"/") {
			t.Errorf("staged material left behind: %s", p)
		}
	}

	fl, inv = fakeFleetOf(t, spec)
	loadFails(fl)
	code, out, stderr, rep = runRollout(t, fakeSystem(fl, false, ""), "rotate-ca", "-i", inv, "--yes", "--concurrency", "1", "--max-failures", "1")
	if code != ExitFailed || rep == nil || outcomes(rep) != "c0001=failed c0002=done c0003=done" || rep.Stopped != "" {
		t.Errorf("--max-failures 1: exit %d\n%s\n%s", code, out, stderr)
	}
}

// TestRolloutMaintenanceWindow: outside --maintenance-window no cluster
// starts: nothing changes, and the run says why (exit 1).
func TestRolloutMaintenanceWindow(t *testing.T) {
	fl, inv := fakeFleet(t)
	before := fleetFiles(fl)
	day := time.Now().UTC().AddDate(0, 0, 3).Weekday().String()[:3]
	window := day + " 00:00-23:59 UTC"
	code, out, stderr, rep := runRollout(t, fakeSystem(fl, false, ""), "rotate-ca", "-i", inv, "--yes", "--maintenance-window", window)
	if code != ExitFailed || rep == nil || outcomes(rep) != "c0001=not-started c0002=not-started" {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
	if want := "stopped starting clusters: outside the maintenance window " + window + " (2 not started)"; !strings.Contains(out, want) {
		t.Errorf("output lacks %q:\n%s", want, out)
	}
	if !sameFiles(before, fleetFiles(fl)) {
		t.Error("nodes changed outside the window")
	}
}

// TestRolloutAgentBatch: --agent-batch N restarts N agents together and
// only then waits for their gates; the default restarts one at a time.
// Seen from the agents: how many were restarted before the first gate
// read one of them.
func TestRolloutAgentBatch(t *testing.T) {
	for _, tc := range []struct {
		command, restart string
	}{
		{"rotate-ca", "systemctl --no-block restart"},
		{"rotate", " certificate rotate -d "},
	} {
		for batch, want := range map[string]int{"1": 1, "2": 2, "100%": 3} {
			t.Run(tc.command+" "+batch, func(t *testing.T) {
				fl, inv := fakeFleetOf(t, fleettest.Spec{Clusters: 1, Servers: 1, Agents: 3})
				var mu sync.Mutex
				var seen []string
				for _, n := range fl.Nodes() {
					if n.Role != "agent" {
						continue
					}
					fl.Node(n.ID()).BeforeRun = func(_ context.Context, script string) *remote.Result {
						mu.Lock()
						defer mu.Unlock()
						switch {
						case strings.Contains(script, tc.restart):
							seen = append(seen, "restart")
						case strings.Contains(script, "@@fleetcert-facts") && slices.Contains(seen, "restart"):
							seen = append(seen, "gate")
						}
						return nil
					}
				}
				code, out, stderr := runFake(fl, false, "", tc.command, "-i", inv, "--yes", "--agent-batch", batch)
				if code != ExitOK {
					t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
				}
				first := slices.Index(seen, "gate")
				if first != want || strings.Count(strings.Join(seen, " "), "restart") != 3 {
					t.Errorf("%d agent(s) restarted before the first gate, want %d (%v)", first, want, seen)
				}
			})
		}
	}
}

// TestRolloutLockHeld: a cluster locked by another live run is refused
// (exit 3) and untouched, and the error says how to go on; --force-unlock
// removes the lock and the cluster is rotated.
func TestRolloutLockHeld(t *testing.T) {
	fl, inv := fakeFleet(t)
	n, l := primary(fl, "c0001")
	lock := path.Join(l.FleetcertDir(), "lock")
	held, _ := json.Marshal(orchestrator.LockInfo{Owner: "ctl-2", PID: 4242, RunID: "20260101T000000Z-0a0b0c", Command: "rotate-ca",
		Created: time.Now(), Expires: time.Now().Add(time.Hour)})
	n.Put(lock, held, 0o600)
	before := clusterFiles(fl, "c0001")
	code, out, stderr, rep := runRollout(t, fakeSystem(fl, false, ""), "rotate-ca", "-i", inv, "--yes")
	if code != ExitRefused || rep == nil || outcomes(rep) != "c0001=refused c0002=done" {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
	if want := "cluster c0001 is locked by run 20260101T000000Z-0a0b0c (rotate-ca on ctl-2, pid 4242)"; !strings.Contains(out, want) || !strings.Contains(out, "--force-unlock") {
		t.Errorf("the table does not say who holds the lock and how to go on:\n%s", out)
	}
	if !sameFiles(before, clusterFiles(fl, "c0001")) {
		t.Error("a locked cluster was changed")
	}
	if _, table, _ := runFake(fl, false, "", "status", "-i", inv, "--cluster", "c0001"); !strings.Contains(table, "held by 20260101T000000Z-0a0b0c (ctl-2, pid 4242)") {
		t.Errorf("status does not show the lock:\n%s", table)
	}
	code, out, stderr, rep = runRollout(t, fakeSystem(fl, false, ""), "rotate-ca", "-i", inv, "--yes", "--cluster", "c0001", "--force-unlock")
	if code != ExitOK || rep == nil || outcomes(rep) != "c0001=done" {
		t.Fatalf("--force-unlock: exit %d\n%s\n%s", code, out, stderr)
	}
	if _, still := n.File(lock); still {
		t.Error("the lock is still there")
	}
}
